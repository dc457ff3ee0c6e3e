"""The CLI in-process (typer's runner) for everything that does not start Flower."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmm.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["demo-data"], ["validate-data"], ["simulate"],
                                     ["privacy"]])
def test_help_explains_itself(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output) > 300


COMMANDS = [["demo-data"], ["validate-data"], ["simulate"], ["privacy"], ["server"], ["dashboard"],
            ["client"], ["keys", "init"], ["keys", "hospital"], ["keys", "roster"]]


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_paragraphs_wrap_evenly_at_any_width(command: list[str], width: int) -> None:
    """Each paragraph of a command's help fills the terminal's lines (no docstring line break
    leaves a ragged short line mid-sentence), and nothing runs past the width."""
    import itertools

    # in-process: the same text `fedmm ... --help` prints in a terminal of that width
    result = runner.invoke(app, [*command, "--help"], prog_name="fedmm",
                           env={"COLUMNS": str(width), "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= width for line in lines)
    prose = lines[lines.index(next(x for x in lines if x.strip().startswith("Usage"))) + 2:
                  next(i for i, x in enumerate(lines) if x.startswith(("╭", "+")))]
    for line, following in itertools.pairwise(prose):
        if line.strip() and following.strip():  # a line the same paragraph goes on after
            assert len(line.rstrip()) > width - 25, (line, following)


def test_demo_data_then_validate(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo-data", str(tmp_path / "d"), "--sites", "2",
                                 "--samples-per-site", "12", "--test-samples", "0"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["site-01", "site-02"]
    result = runner.invoke(app, ["validate-data", str(tmp_path / "d" / "site-01")])
    assert result.exit_code == 0
    assert "12 rows, 12 usable, 0 bad" in result.output and "usable" in result.output
    result = runner.invoke(app, ["validate-data", str(tmp_path / "d" / "site-02"), "--json"])
    report = json.loads(result.output)
    assert report["usable"] and report["modalities"] == {"image": 12, "text": 12, "audio": 12}


def test_validate_reads_under_the_site_policys_read_limits(demo_root: Path,
                                                           tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(demo_root / "site-01", site)
    strict = tmp_path / "strict.toml"
    strict.write_text("[read_limits]\nmax_image_pixels = 100\n")
    result = runner.invoke(app, ["validate-data", str(site), "--policy", str(strict)])
    assert result.exit_code == 1
    assert "> limit 100 pixel values (read_limits.max_image_pixels in the site policy)" in \
        result.output
    strict.write_text("[read_limits]\nmax_image_pixels = -1\n")
    result = runner.invoke(app, ["validate-data", str(site), "--policy", str(strict)])
    assert result.exit_code == 2 and "read_limits.max_image_pixels" in result.output


def test_validate_lists_bad_rows_and_exits_one(demo_root: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(demo_root / "site-01", site)
    lines = (site / "manifest.csv").read_text().splitlines()
    kept = [lines[0]] + [line.replace(",images/", ",images/x") for line in lines[1:12]]
    (site / "manifest.csv").write_text("\n".join(kept) + "\n")
    result = runner.invoke(app, ["validate-data", str(site)])
    assert result.exit_code == 1
    assert result.output.count("not found") == 11 and "not usable" in result.output


def test_unusable_folder_is_one_line_exit_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate-data", str(tmp_path)])
    assert result.exit_code == 1
    assert "manifest.csv: missing" in result.output
    assert "Traceback" not in result.output


def test_bad_config_is_one_line_exit_two(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text("[privacy]\ndelta = 2.0\n")
    result = runner.invoke(app, ["simulate", "--config", str(tmp_path / "run.toml"),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "privacy.delta = 2.0" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["simulate", "--set", "training.rounds=0",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "training.rounds = 0" in result.output
    result = runner.invoke(app, ["simulate", "--set", "nonsense", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.output


def test_simulate_will_not_overwrite_a_run_silently(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    result = runner.invoke(app, ["simulate", "--out", str(out)])
    assert result.exit_code == 2 and "--resume" in result.output
    result = runner.invoke(app, ["simulate", "--out", str(out), "--resume", "--overwrite"])
    assert result.exit_code == 2 and "contradict" in result.output
    result = runner.invoke(app, ["simulate", "--data", str(tmp_path / "none"),
                                 "--out", str(tmp_path / "o2")])
    assert result.exit_code == 1 and "not a folder" in result.output


def test_privacy_on_a_folder_without_ledger_and_with_a_bad_policy(site_copy: Path) -> None:
    result = runner.invoke(app, ["privacy", str(site_copy)])
    assert result.exit_code == 0 and "no DP-SGD steps recorded" in result.output
    (site_copy / "policy.toml").write_text("max_epsilon = -2\n")
    result = runner.invoke(app, ["privacy", str(site_copy)])
    assert result.exit_code == 1 and "max_epsilon = -2" in result.output


def test_more_min_sites_than_sites_is_refused_up_front(demo_root: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--data", str(demo_root), "--set",
                                 "training.min_sites=5", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "only 3 sites are simulated" in result.output


def test_client_refuses_to_join_with_a_broken_policy_before_any_connection(site_copy) -> None:
    (site_copy / "policy.toml").write_text("max_epsilon = -1\n")
    result = runner.invoke(app, ["client", "--data", str(site_copy), "--server",
                                 "127.0.0.1:1", "--ca", "ca.crt", "--key", "k.key"])
    assert result.exit_code == 1
    assert "max_epsilon = -1" in result.output and "Traceback" not in result.output


def test_pretrained_encoders_without_the_extra_is_one_line_exit_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if not installed
    result = runner.invoke(app, ["simulate", "--encoders", "pretrained", "--out",
                                 str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "missing: sentence-transformers" in result.output
    assert "pip install 'fedmm[pretrained]'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_unknown_encoders_are_refused_by_flag_and_by_config(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--encoders", "imagenet", "--out",
                                 str(tmp_path / "run")])
    assert result.exit_code == 2 and "--encoders" in result.output
    result = runner.invoke(app, ["simulate", "--set", "model.encoders=imagenet", "--out",
                                 str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "model.encoders = 'imagenet'" in result.output


def test_fashion_task_without_the_dataset_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDMM_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    result = runner.invoke(app, ["demo-data", str(tmp_path / "d"), "--task", "fashion-mnist"])
    assert result.exit_code == 1
    assert "apt-get install dataset-fashion-mnist" in result.output
    assert "Traceback" not in result.output


def test_keys_roster_adds_the_peers_and_prints_their_fingerprints(site_copy, tmp_path) -> None:
    from common.pki import hospital_key
    from common.secagg.identity import Roster, fingerprint

    peers = [hospital_key(tmp_path / "keys", name=f"hospital-{i}")[1] for i in (2, 3)]
    result = runner.invoke(app, ["keys", "roster", str(site_copy), *map(str, peers)])
    assert result.exit_code == 0, result.output
    assert all(fingerprint(p.read_bytes()) in result.output for p in peers)
    assert len(Roster.from_folder(site_copy / "roster").keys) == 2
    (tmp_path / "bad.pub").write_text("no key")
    result = runner.invoke(app, ["keys", "roster", str(site_copy), str(tmp_path / "bad.pub")])
    assert result.exit_code == 2 and "bad.pub: not an OpenSSH public key" in result.output


def test_a_site_that_needs_secure_rounds_does_not_join_without_a_roster(site_copy,
                                                                       tmp_path) -> None:
    from common.pki import hospital_key

    key, _ = hospital_key(tmp_path, name="hospital-1")
    (site_copy / "policy.toml").write_text("require_secure_aggregation = true\n")
    result = runner.invoke(app, ["client", "--data", str(site_copy), "--server",
                                 "127.0.0.1:1", "--ca", "ca.crt", "--key", str(key)])
    assert result.exit_code == 1 and "roster folder not found" in result.output
    assert "fedmm keys roster" in result.output and "Traceback" not in result.output


def test_an_unreadable_node_key_is_one_line(site_copy) -> None:
    result = runner.invoke(app, ["client", "--data", str(site_copy), "--server",
                                 "127.0.0.1:1", "--ca", "ca.crt", "--key", "missing.key"])
    assert result.exit_code == 1 and "missing.key: cannot read the node key" in result.output


def test_privacy_shows_each_model_and_the_total(site_copy: Path) -> None:
    from client.ledger import PrivacyLedger

    ledger = PrivacyLedger(site_copy / ".fedmm")
    for model in ("study-1", "study-1-renamed"):
        ledger.reserve(model_id=model, run_id="r", round_number=1, noise_multiplier=1.0,
                       sample_rate=0.1, steps=50, delta=1e-5, accountant="rdp")
    result = runner.invoke(app, ["privacy", str(site_copy)])
    assert result.exit_code == 0, result.output
    assert "model study-1-renamed" in result.output
    assert "all 2 models together: ε" in result.output and "of 10" in result.output
    data = json.loads(runner.invoke(app, ["privacy", str(site_copy), "--json"]).output)
    assert data["total"]["models"] == 2
    assert data["total"]["epsilon"] > max(m["epsilon"] for m in data["models"])


def test_validate_says_how_clinical_images_were_read(tmp_path: Path) -> None:
    """A site of real DICOM files (pydicom's: CT in HU, MR with its own window, a 15-frame RT
    dose grid, an RGB ultrasound frame) and 16-bit PNG scans: validate-data says how each kind
    was read; a CT window preset makes the non-CT grey files bad rows that say why."""
    import numpy as np
    from PIL import Image

    from tests.test_dicom import pydicom_file

    site = tmp_path / "site"
    (site / "images").mkdir(parents=True)
    files = ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "ExplVR_BigEnd.dcm"]
    for name in files:
        shutil.copy(pydicom_file(name), site / "images" / name)
    levels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16
    Image.fromarray(levels).save(site / "images" / "scan16.png")
    files.append("scan16.png")
    rows = [f"p{i},{i % 4},images/{files[i % len(files)]},," for i in range(15)]
    (site / "manifest.csv").write_text("sample_id,label,image,text,audio\n" + "\n".join(rows)
                                       + "\n")
    result = runner.invoke(app, ["validate-data", str(site)])
    assert result.exit_code == 0, result.output
    assert "15 rows, 15 usable, 0 bad" in result.output
    for line in ("3 × DICOM CT MONOCHROME2: HU = 1·stored − 1024, the image's own range",
                 "3 × DICOM MR MONOCHROME2: window 600/1600 (the file's)",
                 "3 × DICOM RTDOSE MONOCHROME2: frame 7 of 15 (the middle one), the image's "
                 "own range (min-max)",
                 "3 × DICOM US RGB: colour, scaled by bit depth",
                 "3 × PNG I;16: I;16, the image's own range (min-max)"):
        assert line in result.output, result.output
    config = tmp_path / "run.toml"
    config.write_text('[data]\ndicom_window = "lung"\n')
    result = runner.invoke(app, ["validate-data", str(site), "--config", str(config), "--json"])
    report = json.loads(result.output)
    assert report["usable_rows"] == 9 and report["images_read_as"][
        "DICOM CT MONOCHROME2: HU = 1·stored − 1024, window -600/1500 (preset lung)"] == 3
    reasons = {issue["reason"] for issue in report["issues"]}
    assert reasons == {f"window preset 'lung' (data.dicom_window) is for CT numbers; this file "
                       f"is {modality}. Use \"file\" or \"min_max\" for a site with other images"
                       for modality in ("MR", "RTDOSE")}
