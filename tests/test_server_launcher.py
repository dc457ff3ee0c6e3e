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
    with pytest.raises(DeploymentError, match=r"^flwr run app did not answer within "
                                              r"300 s \(is the machine overloaded\?\)"):
        launcher(tmp_path)._flwr("run", "app", "fedmm")


def test_hospitals_are_registered_and_the_status_read_in_this_process(tmp_path) -> None:
    """A real SuperLink: every allowed key registered once (no ``flwr`` process started), a
    key registered twice is one line naming the step, an unknown run's status reads as such."""
    import subprocess

    init_keys(tmp_path / "keys", server_hosts=["localhost"], hospitals=["a", "b", "c"])
    keys = sorted((tmp_path / "keys" / "hospitals").glob("*.pub"))
    server = launcher(tmp_path, allowed=keys)
    server.prepare_run_dir()
    started: list = []
    real_popen = subprocess.Popen

    def counting_popen(command, *args, **kwargs):
        started.append(command)
        return real_popen(command, *args, **kwargs)

    server.start_superlink()
    try:
        subprocess.Popen = counting_popen  # type: ignore[misc]
        try:
            ids = server.register_hospitals()
            server.run_id = "12345"
            status = server.run_status()
        finally:
            subprocess.Popen = real_popen  # type: ignore[misc]
        assert len(set(ids)) == 3 and all(i.isdigit() for i in ids)
        assert status == "unknown" and started == []
        twice = launcher(tmp_path, allowed=keys[:1])
        twice.loopback, twice.local_address = server.loopback, server.local_address
        with pytest.raises(DeploymentError, match=r"^registering the hospitals' keys failed: "
                                                  r".*superlink\.log$") as error:
            twice.register_hospitals()
        assert "\n" not in str(error.value)
    finally:
        server.stop()
