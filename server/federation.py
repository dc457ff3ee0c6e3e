"""The round loop: select sites, send the global model, aggregate updates, evaluate, repeat.

It talks to sites only through a Flower ``Grid`` and knows nothing of checkpoints, logs or
displays (those are :mod:`server.callbacks`). A round whose usable updates are fewer than
``min_sites`` keeps the previous global model and says why in its record.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.serialization import Weights, all_finite, check_compatible, from_record, to_record
from server.callbacks import Callback, RunState
from server.checkpoint import latest_checkpoint
from server.optimizers import build_server_optimizer, weighted_mean

log = logging.getLogger("fedmm.server")


class FederationError(RuntimeError):
    """The run cannot go on (no sites, nothing to resume from); message is for a person."""


@dataclass(frozen=True)
class SiteReply:
    node: int
    site_id: str
    status: str
    code: str
    reason: str
    metrics: dict[str, Any]
    record: dict[str, str]
    update: Weights | None


def _parse_reply(reply: Message, site_of: dict[int, str]) -> SiteReply:
    node = reply.metadata.src_node_id
    fallback = site_of.get(node, f"node-{node}")
    if reply.has_error():
        return SiteReply(node, fallback, "failed", "client-error", reply.error.reason[:300], {},
                         {}, None)
    content = reply.content
    record = dict(content["status"]) if "status" in content else {}
    metrics = dict(content["metrics"]) if "metrics" in content else {}
    update = from_record(content["arrays"]) if "arrays" in content else None
    return SiteReply(node, str(record.get("site-id", fallback)),
                     str(record.get("status", "failed")),
                     str(record.get("code", "")), str(record.get("reason", "")), metrics,
                     {k: str(v) for k, v in record.items()}, update)


class Federation:
    def __init__(
        self,
        *,
        grid: Grid,
        config: RunConfig,
        run_dir: Path,
        callbacks: Sequence[Callback],
        resume: bool = False,
        test_dir: Path | None = None,
        wait_for_sites_s: float = 120.0,
    ) -> None:
        self.grid, self.config, self.run_dir = grid, config, Path(run_dir)
        self.callbacks, self.resume, self.test_dir = list(callbacks), resume, test_dir
        self.wait_for_sites_s = wait_for_sites_s
        self.site_of: dict[int, str] = {}

    # -- setup -----------------------------------------------------------------------------
    def _initial_state(self) -> RunState:
        from common.models import build_model
        from common.serialization import model_weights

        config = self.config
        model = build_model(data=config.data, model=config.model, seed=config.training.seed)
        weights = model_weights(model)
        optimizer = build_server_optimizer(config.training)
        state = RunState(config=config, run_dir=self.run_dir, run_id=uuid.uuid4().hex[:12],
                         weights=weights, optimizer=optimizer)
        if not self.resume:
            return state
        checkpoint = latest_checkpoint(self.run_dir)
        if checkpoint is None:
            raise FederationError(f"{self.run_dir}: no checkpoint to resume from; run without "
                                  "--resume to start afresh")
        check_compatible(weights, checkpoint.weights, what="checkpoint")
        saved_config = checkpoint.state.get("config")
        if saved_config and RunConfig.model_validate(saved_config) != config:
            raise FederationError(f"{self.run_dir}: the checkpoint was made with another "
                                  "configuration; resume with the same config")
        optimizer.load_state(checkpoint.optimizer_state)
        state.weights, state.round = checkpoint.weights, checkpoint.round
        state.run_id = checkpoint.state.get("run_id", state.run_id)
        state.sites = checkpoint.state.get("sites", {})
        log.info("resuming after round %d", checkpoint.round)
        return state

    def _wait_for_nodes(self) -> list[int]:
        needed = self.config.training.min_sites
        deadline = time.monotonic() + self.wait_for_sites_s
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= needed:
                return nodes
            if time.monotonic() > deadline:
                raise FederationError(f"only {len(nodes)} sites connected after "
                                      f"{self.wait_for_sites_s:.0f} s; need {needed} "
                                      "(training.min_sites)")
            time.sleep(1.0)

    def _exchange(self, nodes: Sequence[int], kind: str, state: RunState,
                  arrays: Weights | None) -> list[SiteReply]:
        """Send ``kind`` to ``nodes``; one reply per node (``no-reply`` for the silent ones),
        sorted by site id so that sums over replies are reproducible."""
        config = ConfigRecord({"run-config": self.config.to_json(), "round": state.round + 1,
                               "run-id": state.run_id})
        payload = to_record(arrays) if arrays is not None else None
        messages = []
        for node in nodes:
            content = RecordDict({"config": config})
            if payload is not None:
                content["arrays"] = payload
            messages.append(Message(content, dst_node_id=node, message_type=kind,
                                    group_id=str(state.round + 1)))
        replies = self.grid.send_and_receive(messages,
                                             timeout=self.config.training.round_timeout_s)
        parsed = [_parse_reply(r, self.site_of) for r in replies]
        answered = {p.node for p in parsed}
        parsed += [SiteReply(node, self.site_of.get(node, f"node-{node}"), "failed", "no-reply",
                             "no reply before the round timeout", {}, {}, None)
                   for node in nodes if node not in answered]
        return sorted(parsed, key=lambda p: p.site_id)

    def _discover_sites(self, state: RunState) -> list[int]:
        usable = []
        for reply in self._exchange(self._wait_for_nodes(), "query.site_info", state, None):
            if reply.status == "ok":
                self.site_of[reply.node] = reply.site_id
                usable.append(reply.node)
                bad = int(reply.metrics.get("bad-rows", 0))
                if bad:
                    log.warning("site %s: %d bad rows skipped", reply.site_id, bad)
            else:
                log.warning("site %s unusable: %s", reply.site_id, reply.reason)
        if len(usable) < self.config.training.min_sites:
            raise FederationError(f"only {len(usable)} usable sites; need "
                                  f"{self.config.training.min_sites}")
        return sorted(usable, key=lambda n: self.site_of[n])

    def _select(self, nodes: list[int], round_number: int) -> list[int]:
        training = self.config.training
        count = max(training.min_sites, math.ceil(training.fraction_train * len(nodes)))
        if count >= len(nodes):
            return nodes
        rng = np.random.default_rng([training.seed, round_number])
        chosen = rng.choice(len(nodes), size=count, replace=False)
        return [nodes[i] for i in sorted(chosen)]

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> RunState:
        state = self._initial_state()
        for callback in self.callbacks:
            callback.on_run_start(state)
        nodes = self._discover_sites(state)
        test_data = self._load_test_data()
        exhausted: set[str] = set()
        while state.round < self.config.training.rounds:
            started = time.perf_counter()
            active = [n for n in nodes if self.site_of[n] not in exhausted]
            if len(active) < self.config.training.min_sites:
                state.stop_reason = (f"only {len(active)} sites have privacy budget left; "
                                     f"need {self.config.training.min_sites}")
                log.warning(state.stop_reason)
                break
            selected = self._select(active, state.round + 1)
            replies = self._exchange(selected, "train", state, state.weights)
            record = self._aggregate(state, replies)
            exhausted |= {r.site_id for r in replies if r.code == "budget-exhausted"}
            state.round += 1
            record.update(self._evaluate(state, selected, test_data))
            record["seconds"] = round(time.perf_counter() - started, 3)
            state.rounds.append(record)
            for callback in self.callbacks:
                callback.on_round_end(state, record)
        for callback in self.callbacks:
            callback.on_run_end(state)
        return state

    def _aggregate(self, state: RunState, replies: list[SiteReply]) -> dict[str, Any]:
        sites: dict[str, dict[str, Any]] = {}
        usable: list[tuple[Weights, float]] = []
        for reply in replies:
            entry: dict[str, Any] = {"status": reply.status}
            if reply.code:
                entry.update(code=reply.code, reason=reply.reason)
            if "history" in reply.record:
                history = json.loads(reply.record["history"])
                state.sites[reply.site_id] = {
                    "epsilon": float(reply.metrics.get("epsilon", 0.0)),
                    "max_grad_norm": float(reply.metrics.get(
                        "max-grad-norm", self.config.privacy.max_grad_norm)),
                    "history": history,
                }
            for key in ("epsilon", "train-loss", "num-examples", "seconds", "noise-multiplier",
                        "skipped-rows"):
                if key in reply.metrics:
                    entry[key.replace("-", "_")] = reply.metrics[key]
            if "grad-sample-mode" in reply.record:
                entry["grad_sample_mode"] = reply.record["grad-sample-mode"]
            if reply.status == "ok" and reply.update is not None:
                try:
                    check_compatible(state.weights, reply.update, what=f"site {reply.site_id}")
                    usable.append((reply.update, float(reply.metrics["num-examples"])))
                except ValueError as error:
                    entry.update(status="rejected", reason=str(error))
            elif reply.status != "ok":
                log.warning("site %s %s (%s): %s", reply.site_id, reply.status, reply.code,
                            reply.reason)
            sites[reply.site_id] = entry
        record: dict[str, Any] = {"round": state.round + 1, "sites": sites,
                                  "sites_ok": len(usable)}
        epsilons = [s["epsilon"] for s in state.sites.values()]
        record["epsilon_max"] = max(epsilons) if epsilons else None
        if len(usable) < self.config.training.min_sites:
            record["aggregated"] = False
            record["note"] = (f"{len(usable)} usable updates < min_sites "
                              f"{self.config.training.min_sites}; global model kept")
            log.warning("round %d: %s", state.round + 1, record["note"])
            return record
        mean = weighted_mean(usable)
        new_weights = state.optimizer.step(state.weights, mean)
        if not all_finite(new_weights):
            record["aggregated"] = False
            record["note"] = "aggregate not finite; global model kept"
            log.error("round %d: %s", state.round + 1, record["note"])
            return record
        state.weights = new_weights
        record["aggregated"] = True
        return record

    def _load_test_data(self):
        if self.test_dir is None:
            return None
        from common.sitedata import load_site

        return load_site(self.test_dir, self.config.data)

    def _evaluate(self, state: RunState, nodes: list[int], test_data) -> dict[str, Any]:
        result: dict[str, Any] = {}
        replies = [r for r in self._exchange(nodes, "evaluate", state, state.weights)
                   if r.status == "ok" and r.metrics.get("num-examples")]
        total = sum(float(r.metrics["num-examples"]) for r in replies)
        if total > 0:
            for key in ("loss", "accuracy"):
                result[key] = sum(float(r.metrics[key]) * float(r.metrics["num-examples"])
                                  for r in replies) / total
        if test_data is not None and len(test_data):
            from common.evaluation import evaluate_weights

            metrics = evaluate_weights(self.config, state.weights, test_data)
            result["test_loss"], result["test_accuracy"] = metrics["loss"], metrics["accuracy"]
        return result
