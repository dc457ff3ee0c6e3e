import pytest

from common.config import RunConfig
from common.pki import init_keys
from server.launcher import DeploymentError, ServerLauncher, ServerSettings
from server.run_folder import RunFolder


def launcher(tmp_path, **settings) -> ServerLauncher:
    values = {"run_dir": tmp_path / "run", "certs": tmp_path / "keys",
              "allowed": [tmp_path / "keys" / "hospitals" / "a.pub"], **settings}
    return ServerLauncher(ServerSettings(**values), RunConfig())


def test_missing_certificates_and_keys_are_named(tmp_path) -> None:
    with pytest.raises(DeploymentError, match=r"ca\.crt: missing; run `fedmm keys init`"):
        launcher(tmp_path).check()
    init_keys(tmp_path / "keys", server_hosts=["localhost"], hospitals=["a"])
    launcher(tmp_path).check()
    with pytest.raises(DeploymentError, match="no hospital may join"):
        launcher(tmp_path, allowed=[]).check()
    with pytest.raises(DeploymentError, match="not an OpenSSH public key"):
        launcher(tmp_path, allowed=[tmp_path / "keys" / "ca.crt"]).check()


def test_resume_needs_the_same_configuration(tmp_path) -> None:
    with pytest.raises(DeploymentError, match="no run to resume"):
        launcher(tmp_path, resume=True).prepare_run_dir()
    launcher(tmp_path).prepare_run_dir()
    assert RunConfig.from_json(RunFolder(tmp_path / "run").run_config.read_text()) == RunConfig()
    launcher(tmp_path, resume=True).prepare_run_dir()
    other = ServerLauncher(ServerSettings(run_dir=tmp_path / "run", certs=tmp_path,
                                          allowed=[], resume=True),
                           RunConfig.model_validate({"training": {"rounds": 3}}))
    with pytest.raises(DeploymentError, match="another configuration"):
        other.prepare_run_dir()


def test_a_failing_flwr_call_reports_its_last_line(tmp_path, monkeypatch) -> None:
    import subprocess

    def fake_run(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, stdout="", stderr="first\nPort in use\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(DeploymentError, match=r"^flwr list failed: Port in use$"):
        launcher(tmp_path)._flwr("list")


def test_a_flwr_call_that_hangs_is_named_not_a_traceback(tmp_path, monkeypatch) -> None:
    import subprocess

    def hanging_run(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", hanging_run)
    with pytest.raises(DeploymentError, match=r"^flwr supernode register did not answer within "
                                              r"300 s \(is the machine overloaded\?\)"):
        launcher(tmp_path)._flwr("supernode", "register", "key.pub")
