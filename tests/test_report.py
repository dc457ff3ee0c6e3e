"""The run report: the centralized references land in report.md and summary.json."""

from __future__ import annotations

import json

from server.report import REFERENCES_HEADING, add_references
from server.run_folder import RunFolder


def test_references_replace_their_section_and_join_the_summary(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    folder.report_dir.mkdir(parents=True, exist_ok=True)
    folder.report.write_text("# fedmm run report\n\n- rounds completed: 3\n")
    folder.summary.write_text(json.dumps({"rounds_completed": 3}))
    references = {"non_private": {"examples": 64, "epochs": 3, "test_accuracy": 0.9},
                  "dp": {"test_accuracy": 0.8, "epsilon": 3.99, "noise_multiplier": 1.1},
                  "ratios": {"privacy": 0.889, "federation_under_dp": 0.75}}
    for _ in range(2):  # a second call replaces the section
        add_references(folder, references)
    text = folder.report.read_text()
    assert text.count(REFERENCES_HEADING) == 1 and text.startswith("# fedmm run report")
    assert "| centralized DP-SGD | 0.8000 | 3.990 | 1.100 |" in text
    assert "cost of federation under DP (federated ÷ centralized DP): 0.750" in text
    summary = folder.read_summary()
    assert summary["rounds_completed"] == 3 and summary["centralized"] == references
