"""Another account on a hospital machine cannot reach the SuperNode's runtime, read its secret
or the ledger, find a task token in the process table, or stop the client by squatting a name.
With Flower's own SuperNode (subprocess isolation, runtime on a TCP port, tokens on command
lines) the same local user pulls a task's inputs with a token read from ``ps``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from client.launcher import ClientLauncher, ClientSettings, JoinError
from tests.attacks.weakened import old_worker_address
from tests.deployment import (
    NOBODY,
    OLD_WORKER_SQUAT,
    audit,
    start_as_nobody,
    world_traversable_root,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as nobody")


@pytest.mark.slow
def test_another_account_reaches_nothing_of_the_runtime(deployment) -> None:
    report = deployment["local_user"]
    assert report["clientapp_processes_with_tokens"] == 0
    assert report["socket"] == "PermissionError"
    assert report["bell"] == "PermissionError"  # the executor's doorbell
    assert report["superexec.secret"] == "PermissionError"
    assert report["plant"] == "PermissionError"
    assert report["ledger"] == "PermissionError"


@needs_root
def test_the_doorbell_rings_for_another_account_only_where_its_folder_is_open() -> None:
    """The weakened variant of the doorbell probe above: the same ring, sent as ``nobody``,
    reaches a bell whose folder and socket are open to everyone, and not one in a 0700
    folder as ``runtime/`` is."""
    from client.doorbell import Doorbell
    from tests.deployment import as_nobody

    root = world_traversable_root("fmbell")
    ring = ("import socket, sys\n"
            "try:\n"
            "    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'x', sys.argv[1])\n"
            "    print('rang')\n"
            "except OSError as error:\n"
            "    print(type(error).__name__)\n")
    try:
        for mode, heard in ((0o700, False), (0o777, True)):
            folder = root / f"runtime-{mode:o}"
            folder.mkdir()
            folder.chmod(mode)
            bell = Doorbell(folder / "bell")
            try:
                if heard:
                    (folder / "bell").chmod(0o777)  # weakened: anyone may write to it
                answer = as_nobody(root, ring, str(folder / "bell")).strip()
                assert answer == ("rang" if heard else "PermissionError"), (mode, answer)
                assert bell.wait(2 if heard else 0.2) is heard
            finally:
                bell.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_without_the_secret_the_runtime_hands_out_no_task(deployment) -> None:
    status, body = deployment["no_secret_acquire"]
    assert status == 401 and b"Authentication failed" in body
    status, _ = deployment["guessed_token"]
    assert status == 401


@pytest.mark.slow
def test_no_task_token_shows_in_the_process_table(deployment, weakened) -> None:
    """A local user watched /proc through the first rounds for a ClientApp's token."""
    assert deployment["thief"]["token_seen"] is False, deployment["thief"]
    thief = weakened["thief"]  # Flower's subprocess isolation: the token opens the task
    assert thief["token_seen"] and thief["accepted"], thief


@pytest.mark.slow
def test_a_squatted_name_does_not_stop_the_client(deployment) -> None:
    """Site 2 joined while another account squatted the name the old worker would have used."""
    sent = [e for e in audit(deployment["data"] / "site-02" / ".fedmm")
            if e["kind"] == "train.secagg_masked_input" and e["status"] == "ok"]
    assert [e["round"] for e in sent] == [1, 2, 3]


@needs_root
def test_the_old_worker_name_could_be_squatted() -> None:
    """The weakened variant: a name derived from the state folder's path alone is taken by
    whoever binds it first."""
    root = world_traversable_root("fmsquat")
    squat = start_as_nobody(root, OLD_WORKER_SQUAT, str(root / ".fedmm"), "30")
    try:
        assert squat.stdout is not None and squat.stdout.readline().strip() == "squatting"
        with socket.socket(socket.AF_UNIX) as mine, pytest.raises(OSError):
            mine.bind(old_worker_address(root / ".fedmm"))
    finally:
        squat.kill()
        shutil.rmtree(root, ignore_errors=True)


@needs_root
def test_a_state_folder_another_account_planted_is_refused(tmp_path) -> None:
    planted = tmp_path / "site" / ".fedmm"
    planted.mkdir(parents=True)
    os.chown(planted, NOBODY, NOBODY)
    settings = ClientSettings(data_dir=tmp_path / "site", server="h:1", ca=tmp_path / "ca",
                              key=tmp_path / "k")
    with pytest.raises(JoinError, match=r"belongs to uid 65534, not to this account"):
        ClientLauncher(settings).prepare()


def test_a_second_client_for_the_same_state_folder_is_refused(tmp_path) -> None:
    settings = ClientSettings(data_dir=tmp_path, server="h:1", ca=tmp_path / "ca",
                              key=tmp_path / "k")
    first = ClientLauncher(settings)
    first.prepare()
    try:
        with pytest.raises(JoinError, match="another fedmm client already serves"):
            ClientLauncher(settings).prepare()
        assert oct(settings.state.runtime_dir.stat().st_mode & 0o777) == "0o700"
        assert oct(settings.state.superexec_secret.stat().st_mode & 0o777) == "0o600"
    finally:
        first.stop()
    assert not settings.state.superexec_secret.exists()
    ClientLauncher(settings).prepare()


def test_setpriv_is_there() -> None:
    assert subprocess.run(["setpriv", "--version"], capture_output=True).returncode == 0
