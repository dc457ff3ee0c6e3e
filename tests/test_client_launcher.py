"""The hospital's join checks, against a real TLS listener on loopback."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import replace
from pathlib import Path

import pytest

import client.launcher as launcher_module
from client.launcher import (
    ClientLauncher,
    ClientSettings,
    JoinError,
    check_server_certificate,
    write_node_config,
)
from common.pki import init_keys
from common.processes import free_port


@pytest.fixture
def tls_server(tmp_path):
    """A TLS listener presenting the server certificate; yields (port, keys layout)."""
    layout = init_keys(tmp_path / "keys", server_hosts=["localhost", "127.0.0.1"],
                       hospitals=["a"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(layout.server_cert, layout.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, layout
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_the_right_ca_verifies_the_server(tls_server) -> None:
    port, layout = tls_server
    assert check_server_certificate("127.0.0.1", port, layout.ca_cert)
    assert check_server_certificate("localhost", port, layout.ca_cert)


def test_a_wrong_ca_fails_with_a_clear_tls_message(tls_server, tmp_path) -> None:
    port, _ = tls_server
    other = init_keys(tmp_path / "other", server_hosts=["localhost"], hospitals=["a"])
    with pytest.raises(JoinError, match=r"TLS: the server at 127.0.0.1:\d+ is not trusted by"):
        check_server_certificate("127.0.0.1", port, other.ca_cert)


def test_an_unreachable_server_is_not_an_error_yet(tmp_path) -> None:
    layout = init_keys(tmp_path, server_hosts=["localhost"], hospitals=["a"])
    assert check_server_certificate("127.0.0.1", free_port(), layout.ca_cert) is False


def test_node_config_names_the_site_folders(tmp_path) -> None:
    settings = ClientSettings(data_dir=tmp_path / "my site", server="h:1", ca=Path("ca"),
                              key=Path("k"), site_id="st-mary")
    text = write_node_config(settings).read_text()
    assert f'data-dir = "{(tmp_path / "my site").resolve()}"' in text
    assert 'site-id = "st-mary"' in text


@pytest.mark.parametrize("server", ["nohost", "host:", ":9092", "host:port"])
def test_server_address_must_be_host_and_port(server: str) -> None:
    settings = ClientSettings(data_dir=Path("d"), server=server, ca=Path("c"), key=Path("k"))
    with pytest.raises(JoinError, match="expected HOST:PORT"):
        settings.host_port()


def test_a_refused_key_is_retried_for_the_registration_wait_then_named(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SuperNode stand-in that exits as Flower's does for an unknown key (exit code 305)."""
    refusing = tmp_path / "flower-supernode"
    refusing.write_text("#!/bin/sh\necho 'Exit Code: 305'\nexit 1\n")
    refusing.chmod(0o755)
    monkeypatch.setattr(launcher_module, "supernode_command", lambda **_: [str(refusing)])
    monkeypatch.setattr(launcher_module, "RESTART_PAUSE_S", 0.1)
    (tmp_path / "site").mkdir()
    settings = ClientSettings(data_dir=tmp_path / "site", server="127.0.0.1:9", ca=tmp_path / "ca",
                              key=tmp_path / "hospital-1.key", registration_wait_s=2.0)
    retries: list[float] = []
    launcher = ClientLauncher(settings)
    with pytest.raises(JoinError, match=r"refused this hospital's key \(hospital-1.key\)"):
        launcher.supervise(on_unregistered=retries.append)
    assert len(retries) >= 2 and launcher.log_path.read_text().count("Exit Code: 305") >= 3
    retries.clear()
    launcher = ClientLauncher(replace(settings, registration_wait_s=0))
    with pytest.raises(JoinError):
        launcher.supervise(on_unregistered=retries.append)
    assert retries == []
