"""The deliberately weakened setup the attack tests compare against: Flower's SuperLink and
SuperNode started with the flags fedmm's launchers used before (the SuperLink on the public
port, the SuperNode in subprocess isolation with its runtime API on a TCP port). Every attack
that fails against fedmm must succeed here, or the test proves nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import processes
from common.pki import init_keys
from tests.deployment import (
    TOKEN_THIEF,
    flwr,
    flwr_env,
    folder,
    https_post,
    start_as_nobody,
    stop_everything,
    stranger_home,
    submit_intruder,
    wait_until,
    world_traversable_root,
)


def weakened_deployment() -> Iterator[dict[str, Any]]:
    from simulations.demo_data import generate_demo
    from simulations.scenarios import Scenario

    root = world_traversable_root("fmweak")
    started: list[Any] = []
    result: dict[str, Any] = {"root": root}
    try:
        # the old launcher needed the certificate to name 127.0.0.1 (its SuperLink talks to itself)
        layout = init_keys(root / "keys", server_hosts=["localhost", "127.0.0.1"],
                           hospitals=["hospital-1"])
        generate_demo(root / "data", sites=1, samples_per_site=20, seed=1,
                      scenario=Scenario.IID, test_samples=0)
        port, runtime_port = processes.free_port(), processes.free_port()
        superlink = processes.start(
            [processes.flower_command("flower-superlink"), "--ssl-ca-certfile",
             str(layout.ca_cert), "--ssl-certfile", str(layout.server_cert), "--ssl-keyfile",
             str(layout.server_key), "--enable-supernode-auth",
             "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
             "--port", str(port)],
            env=flwr_env(folder(root, "superlink-home")),
            log=(root / "superlink.log").open("ab"), cwd=root)
        started.append(superlink)
        assert processes.wait_for_port("127.0.0.1", port, timeout=60, process=superlink)
        operator = stranger_home(root, address=f"localhost:{port}", ca=layout.ca_cert)
        code, _, output = flwr(["supernode", "register", str(layout.hospital_public(
            "hospital-1")), "target"], flwr_home=operator)
        assert code == 0, output
        node_config = root / "node_config.toml"
        node_config.write_text(f'data-dir = "{root / "data" / "site-01"}"\n')
        log = root / "supernode.log"
        supernode = processes.start(
            [processes.flower_command("flower-supernode"), "--superlink", f"localhost:{port}",
             "--root-certificates", str(layout.ca_cert), "--auth-supernode-private-key",
             str(layout.hospital_key("hospital-1")), "--node-config", str(node_config),
             "--port", str(runtime_port)],
            env=flwr_env(folder(root, "supernode-home")), log=log.open("ab"), cwd=root)
        started.append(supernode)
        wait_until(lambda: "SuperNode ID" in log.read_text(errors="replace"), timeout=60,
                   what="the SuperNode to connect")

        # a stranger with only ca.crt, on the public port
        stranger = stranger_home(root, address=f"localhost:{port}", ca=layout.ca_cert)
        result["stranger_ls"] = flwr(["ls", "target"], flwr_home=stranger)
        evil = init_keys(root / "evil", server_hosts=["x"], hospitals=["evil"])
        result["stranger_register"] = flwr(
            ["supernode", "register", str(evil.hospital_public("evil")), "target"],
            flwr_home=stranger)
        markers = root / "markers"
        result["stranger_run"] = submit_intruder(flwr_home=stranger, connection="target",
                                                 marker_dir=markers, wait_for_nodes=1)
        result["stolen"] = wait_until(lambda: sorted(markers.glob("stolen-*.json")),
                                      timeout=120, what="the foreign ClientApp to run")
        result["loot"] = json.loads(result["stolen"][0].read_text())

        # a local user at the hospital reads a task token from ps and uses it first
        thief = start_as_nobody(root, TOKEN_THIEF, "120")
        started.append(thief)
        submit_intruder(flwr_home=stranger, connection="target", marker_dir=root / "again",
                        wait_for_nodes=1)
        assert thief.stdout is not None
        result["thief"] = json.loads(thief.stdout.readline())
        result["stranger_runtime"] = https_post(
            f"https://localhost:{port}/v1/runtime/acquire-task", layout.ca_cert)
    except BaseException:
        stop_everything(root, started)
        shutil.rmtree(root, ignore_errors=True)
        raise
    stop_everything(root, started)  # all recorded: nothing runs on while later tests do
    try:
        yield result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def old_worker_address(state_dir: Path) -> str:
    """How the previous worker named its socket: from the state folder's path alone."""
    import hashlib

    name = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:24]
    return f"\0fedmm-worker-{name}"
