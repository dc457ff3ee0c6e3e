"""The run folder's one reader of metrics.jsonl."""

from server.run_folder import RoundRecord, RunFolder, SiteRound


def test_rounds_stop_at_a_torn_last_line(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    first = RoundRecord(round=1, sites={"a": SiteRound(status="ok", epsilon=0.5)}, sites_ok=1,
                        aggregated=True, seconds=2.0)
    folder.metrics.write_text(first.to_line() + "\n" + first.to_line()[:20])
    assert folder.rounds() == [first]


def test_a_record_is_plain_json_without_empty_fields(tmp_path) -> None:
    line = RoundRecord(round=2, sites={"a": SiteRound(status="failed", code="no-reply")}
                       ).to_line()
    assert '"note"' not in line and '"code": "no-reply"' in line
    assert RunFolder(tmp_path).rounds() == []


def test_saved_checkpoints_are_the_round_files_by_round_number(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    assert folder.saved_checkpoints() == []
    folder.checkpoints.mkdir()
    for name in ("round-0010.safetensors", "round-0002.safetensors", "round-0003.tmp",
                 "round-x.safetensors"):
        (folder.checkpoints / name).write_bytes(b"")
    assert folder.checkpoint(2).name == "round-0002.safetensors"
    assert folder.saved_checkpoints() == [(2, folder.checkpoint(2)), (10, folder.checkpoint(10))]
