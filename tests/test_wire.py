"""The plaintext round's records: one definition both sides read."""

from flwr.app import RecordDict

from common import wire
from common.config import RunConfig
from common.records import from_records, to_records


def test_the_round_config_carries_the_validated_run_config() -> None:
    config = RunConfig.model_validate({"training": {"rounds": 3}})
    request = wire.RoundConfig(run_config=config.to_json(), round=2, run_id="r")
    back = wire.round_config(RecordDict(to_records(request)))
    assert back == request and back.config() == config


def test_reports_round_trip_with_their_optional_privacy_fields() -> None:
    report = wire.TrainReport(num_examples=10, train_loss=0.3, steps=4, skipped_rows=1,
                              seconds=0.2, epsilon=1.5, history=[[1.0, 0.1, 4.0]])
    assert from_records(wire.TrainReport, RecordDict(to_records(report))) == report
    info = wire.SiteInfo(rows=12, usable=10, bad_rows=2, label_counts={0: 6, 1: 4},
                         modality_counts={"image": 10, "text": 3, "audio": 0})
    assert from_records(wire.SiteInfo, RecordDict(to_records(info))) == info
