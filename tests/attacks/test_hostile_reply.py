"""A hostile hospital's plaintext reply whose weights no model could have (a string tensor)
is that hospital's malformed reply; the round goes on with the others. Weakened (weights read
without their dtype check), the same reply crashes the server's update screening and with it
the run."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, Metadata, RecordDict

from common import serialization, wire
from common.config import RunConfig
from common.records import to_records
from server.federation import Federation
from server.optimizers import build_server_optimizer
from server.replies import parse_reply
from server.run_folder import RunFolder
from server.run_state import RunState


def _reply(node: int, arrays: ArrayRecord) -> Message:
    content = RecordDict({
        **to_records(wire.Status(site_id=f"site-{node}", status="ok")),
        **to_records(wire.TrainReport(num_examples=10, train_loss=0.5, steps=1,
                                      skipped_rows=0, seconds=0.1)),
        wire.ARRAYS: arrays})
    return Message(content=content, metadata=Metadata(
        run_id=1, message_id=f"reply-{node}", src_node_id=node, dst_node_id=0,
        reply_to_message_id=f"train-{node}", group_id="1", created_at=time.time(), ttl=3600.0,
        message_type=wire.TRAIN))


def _round(tmp_path) -> tuple[Federation, RunState, list[Message]]:
    config = RunConfig.model_validate({"training": {"min_sites": 1},
                                       "secure_aggregation": {"enabled": False}})
    federation = Federation(grid=None, config=config, run_dir=tmp_path, callbacks=[])
    state = RunState(config=config, folder=RunFolder(tmp_path), run_id="r",
                     weights={"w": np.zeros(2, np.float32)},
                     optimizer=build_server_optimizer(config.training))
    hostile = ArrayRecord()
    hostile["w"] = Array.from_numpy_ndarray(np.array(["1", "2"]))  # right shape, wrong kind
    replies = [_reply(1, serialization.to_record({"w": np.ones(2, np.float32)})),
               _reply(2, hostile)]
    site_of = {1: "site-1", 2: "site-2"}
    federation._exchange = lambda nodes, kind, state, arrays, extra=None: [
        parse_reply(r, site_of) for r in replies]
    return federation, state, replies


def test_a_string_tensor_is_the_hospitals_malformed_reply_and_the_round_goes_on(
        tmp_path) -> None:
    federation, state, _ = _round(tmp_path)
    outcome = federation._collect_mean_update(state, [1, 2])
    assert outcome.contributors == 1
    hostile = next(r for r in outcome.replies if r.site_id == "site-2")
    assert hostile.status == "failed" and hostile.code == wire.MALFORMED
    assert "dtype" in hostile.reason
    assert np.allclose(outcome.mean["w"], 1.0)


def test_weakened_without_the_dtype_check_the_same_reply_crashes_the_round(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(serialization, "_numeric", lambda array, name: array)
    federation, state, _ = _round(tmp_path)
    with pytest.raises(TypeError):
        federation._collect_mean_update(state, [1, 2])
