"""Real deployments on loopback for the end-to-end and attack tests, and the attackers' tools.

:func:`readme_deployment` follows the README's "Deploying to hospitals" command by command (the
commands are read from README.md itself) with a server name that is not a loopback address:
hospitals reach ``fl.consortium.example`` through a hosts file bind-mounted in a private mount
namespace. The attacks of ``tests/attacks/`` are mounted against that same deployment while it
runs, so the whole suite pays for one deployment.

Local-user attacks run as the unprivileged ``nobody`` account (``setpriv``); the deployment's
root folder is world-traversable, so that only fedmm's own file modes stand in their way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import processes
from tests.e2e import REPO, CliRun, read_jsonl, run_cli

SERVER_NAME = "fl.consortium.example"
INTRUDER_APP = REPO / "tests" / "attacks" / "intruder_app"
NOBODY = 65534
README_PORT = "9092"


# -- the README ------------------------------------------------------------------------------
def readme_commands(heading: str = "## Deploying to hospitals",
                    until: str = "**Docker.**") -> list[list[str]]:
    """Every command in the bash blocks of one README section (up to ``until``), as argv
    lists."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find(until, start) if until else -1
    if end < 0:
        end = text.find("\n## ", start + len(heading))
    section = text[start:end if end > 0 else None]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                commands.append(shlex.split(line))
    return commands


def readme_command(*words: str) -> list[str]:
    """The one README command that starts with ``words`` (e.g. "fedmm", "keys", "init")."""
    found = [c for c in readme_commands() if c[:len(words)] == list(words)]
    assert len(found) == 1, f"README: expected one command starting {' '.join(words)}: {found}"
    return found[0]


def substitute(command: list[str], replacements: dict[str, str]) -> list[str]:
    """``command`` with each word's substrings replaced (the test's folders and port)."""
    out = []
    for word in command:
        for old, new in replacements.items():
            word = word.replace(old, new)
        out.append(word)
    return out


# -- names that are not loopback addresses -----------------------------------------------------
class Hosts:
    """A private mount namespace where :data:`SERVER_NAME` resolves to 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.file = root / "hosts"
        self.file.write_text(f"127.0.0.1 localhost\n127.0.0.1 {SERVER_NAME}\n")
        self.file.chmod(0o644)

    def prefix(self) -> list[str]:
        return ["unshare", "--mount", "sh", "-c",
                'mount --bind "$0" /etc/hosts && exec "$@"', str(self.file)]


def world_traversable_root(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)
    return root


def folder(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(exist_ok=True)
    path.chmod(0o755)
    return path


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str,
               interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def freeze(run: CliRun, marker: str) -> None:
    """SIGSTOP a CLI and every process whose command line names ``marker``: nothing more
    leaves it, and what it wrote can be read before it is killed."""
    _signal_all(run, marker, signal.SIGSTOP)


def kill_hard(run: CliRun, marker: str) -> None:
    """SIGKILL a CLI and every process whose command line names ``marker``."""
    _signal_all(run, marker, signal.SIGKILL)
    run.process.wait(timeout=30)
    wait_until(lambda: not processes.pids_mentioning(marker), timeout=30,
               what=f"every process naming {marker} to die")


def _signal_all(run: CliRun, marker: str, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.process.pid, sig)
    for pid in processes.pids_mentioning(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


# -- attackers' tools ----------------------------------------------------------------------------
def flwr_env(flwr_home: Path) -> dict[str, str]:
    return processes.flower_env(flwr_home)


def flwr(args: list[str], *, flwr_home: Path, prefix: list[str] | None = None,
         timeout: float = 120) -> tuple[int, dict[str, Any], str]:
    """Flower's own CLI with ``FLWR_HOME`` (``--format json``): exit code, answer, output."""
    command = [*(prefix or []), processes.flower_command("flwr"), *args, "--format", "json"]
    result = subprocess.run(command, env=flwr_env(flwr_home), capture_output=True, text=True,
                            timeout=timeout)
    try:
        answer = json.loads(result.stdout[result.stdout.index("{"):])
    except ValueError:
        answer = {}
    return result.returncode, answer, result.stdout + result.stderr


def stranger_home(root: Path, *, address: str, ca: Path) -> Path:
    """A fresh ``FLWR_HOME`` that knows only the server's address and the public CA."""
    home = folder(root, f"stranger-{time.time_ns()}")
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "target"\n\n[superlink.target]\naddress = "{address}"\n'
        f'root-certificates = "{ca}"\n')
    return home


def submit_intruder(*, flwr_home: Path, connection: str, marker_dir: Path, wait_for_nodes: int,
                    prefix: list[str] | None = None) -> tuple[int, dict[str, Any], str]:
    marker_dir.mkdir(parents=True, exist_ok=True)
    marker_dir.chmod(0o777)
    return flwr(["run", str(INTRUDER_APP), connection, "--run-config",
                 f"marker-dir='{marker_dir}' wait-for-nodes={wait_for_nodes}"],
                flwr_home=flwr_home, prefix=prefix)


def start_as_nobody(root: Path, code: str, *args: str) -> subprocess.Popen:
    """Start ``code`` with this interpreter as the unprivileged ``nobody`` account (its
    output on ``stdout``)."""
    script = root / f"attack-{time.time_ns()}.py"
    script.write_text(code)
    script.chmod(0o644)
    return subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, str(script), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO),
             "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(root)})


def as_nobody(root: Path, code: str, *args: str, timeout: float = 120) -> str:
    """Run ``code`` as ``nobody`` to its end; its output."""
    process = start_as_nobody(root, code, *args)
    return process.communicate(timeout=timeout)[0]


# A local user who watches the process table for a ClientApp's task token and uses it on that
# ClientApp's runtime API before the ClientApp does (prints one JSON line). It watches for
# argv[1] seconds, or until the file argv[2] (when given) exists.
TOKEN_THIEF = r'''
import http.client, json, sys, time
from pathlib import Path
deadline = time.time() + float(sys.argv[1])
stop = Path(sys.argv[2]) if len(sys.argv) > 2 else None
seen = []


def post(host, port, path, token):
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.request("POST", path, body=b"", headers={
        "content-type": "application/protobuf", "accept": "application/protobuf",
        "flwr-task-token": token})
    response = connection.getresponse()
    return response.status, response.read()


while time.time() < deadline and not (stop is not None and stop.exists()):
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--token" not in args or not any(a.endswith(b"flwr-clientapp") for a in args):
            continue
        token = args[args.index(b"--token") + 1].decode()
        host, port = args[args.index(b"--runtime-api-address") + 1].decode().rsplit(":", 1)
        statuses, context = {}, False
        for path in ("/v1/runtime/pull-task-input", "/v1/runtime/pull-messages",
                     "/v1/runtime/send-task-heartbeat"):
            status, body = post(host, port, path, token)
            statuses[path.rsplit("/", 1)[1]] = status
            context = context or (status == 200 and b"data-dir" in body)
        print(json.dumps({"token_seen": True, "statuses": statuses, "got_context": context,
                          "accepted": any(s == 200 for s in statuses.values())}), flush=True)
        sys.exit(0)
    time.sleep(0.005)
print(json.dumps({"token_seen": False}), flush=True)
'''

# A local user at a hospital: what of the SuperNode's runtime can another account reach?
LOCAL_USER = r'''
import json, socket, sys
from pathlib import Path
state = Path(sys.argv[1])
report = {}
tokens = []
for entry in Path("/proc").iterdir():
    if entry.name.isdigit():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"--token" in args or b"--token-file" in args) and any(
                a.endswith(b"flwr-clientapp") for a in args):
            tokens.append(entry.name)  # (the server's own ServerApp has one: it is the operator's)
report["clientapp_processes_with_tokens"] = len(tokens)
for name, path in (("socket", state / "runtime" / "api.sock"),):
    try:
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(path))
        report[name] = "connected"
    except OSError as error:
        report[name] = type(error).__name__
try:  # ring the executor's doorbell (a datagram to its socket)
    bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    bell.sendto(b"x", str(state / "runtime" / "bell"))
    report["bell"] = "rang"
except OSError as error:
    report["bell"] = type(error).__name__
for name in ("superexec.secret", "client.lock"):
    try:
        (state / "runtime" / name).read_bytes()
        report[name] = "read"
    except OSError as error:
        report[name] = type(error).__name__
try:
    (state / "runtime" / "planted").write_text("x")
    report["plant"] = "written"
except OSError as error:
    report["plant"] = type(error).__name__
try:
    report["ledger"] = "read" if (state / "privacy_ledger.json").read_bytes() else "empty"
except OSError as error:
    report["ledger"] = type(error).__name__
print(json.dumps(report))
'''

# Squats the abstract socket name the old worker derived from the state folder, then waits.
OLD_WORKER_SQUAT = r'''
import hashlib, socket, sys, time
from pathlib import Path
name = hashlib.sha256(str(Path(sys.argv[1]).resolve()).encode()).hexdigest()[:24]
squat = socket.socket(socket.AF_UNIX)
squat.bind(f"\0fedmm-worker-{name}")
squat.listen()
print("squatting", flush=True)
time.sleep(float(sys.argv[2]))
'''


def runtime_request(socket_path: Path, path: str, *, body: bytes = b"",
                    token: str | None = None) -> tuple[int, bytes]:
    """A request to a SuperNode's runtime API on its Unix socket (with Flower's version
    headers), as a same-account process without the SuperExec secret would send it."""
    import httpx
    from flwr.supercore.runtime_version_compatibility import RuntimeVersionMetadata

    headers = {"content-type": "application/protobuf", "accept": "application/protobuf",
               **dict(RuntimeVersionMetadata.from_local_component("SuperExec").as_metadata())}
    if token is not None:
        headers["flwr-task-token"] = token
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), timeout=10) as http:
        response = http.post(f"http://runtime{path}", content=body, headers=headers)
    return response.status_code, response.content


def acquire_request() -> bytes:
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    return AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]).SerializeToString()


def https_post(url: str, ca: Path, *, prefix: list[str] | None = None) -> int:
    """POST ``url`` with only the CA certificate (from inside the hosts namespace)."""
    code = ("import ssl, sys, urllib.request, urllib.error\n"
            "context = ssl.create_default_context(cafile=sys.argv[2])\n"
            "try:\n"
            "    urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b'', "
            "method='POST', headers={'content-type': 'application/protobuf'}), "
            "context=context, timeout=10)\n"
            "    print(200)\n"
            "except urllib.error.HTTPError as error:\n"
            "    print(error.code)\n")
    result = subprocess.run([*(prefix or []), sys.executable, "-c", code, url, str(ca)],
                            capture_output=True, text=True, timeout=60)
    return int(result.stdout.strip() or 0)


# -- the README deployment -----------------------------------------------------------------------
RUN_CONFIG = """\
model_id = "deploy-e2e"
[model]
embed_dim = 8
hidden_dim = 16
[training]
rounds = 3
local_epochs = 1  # the deployment is under test here, not the recipe
batch_size = 16
min_sites = 2
round_timeout_s = 20  # also how long the round waits for the hospital killed in it
evaluate_every = 3  # the last round only: each evaluation is a message per site
[privacy]
noise_multiplier = 1.2  # fixed: no per-site search for sigma (seconds of CPU per site)
"""


def audit(state: Path) -> list[dict]:
    path = state / "audit.jsonl"
    return read_jsonl(path) if path.exists() else []


def readme_deployment() -> Iterator[dict[str, Any]]:
    """The README's deployment, attacked while it runs; yields what every step showed."""
    from client.ledger import PrivacyLedger
    from simulations.demo_data import generate_demo
    from simulations.scenarios import Scenario

    root = world_traversable_root("fmdeploy")
    hosts = Hosts(root)
    runs: list[CliRun] = []
    background: list[subprocess.Popen] = []
    port = str(processes.free_port())
    result: dict[str, Any] = {"root": root, "port": port}
    try:
        consortium, server_dir = folder(root, "consortium"), folder(root, "server")
        hospital = {i: folder(root, f"hospital-{i}") for i in (1, 2, 3, 4)}
        data = root / "data"
        generate_demo(data, sites=4, samples_per_site=40, seed=4, scenario=Scenario.IID,
                      test_samples=40)
        # site 3 trains long enough (300 patients) to be killed mid-training in round 2
        shutil.rmtree(data / "site-03")
        generate_demo(root / "big", sites=1, samples_per_site=300, seed=5,
                      scenario=Scenario.IID, test_samples=0)
        shutil.move(root / "big" / "site-01", data / "site-03")
        for name in ("site-01", "site-02", "site-03", "site-04"):  # real hospitals: strict
            policy = data / name / "policy.toml"
            policy.write_text(policy.read_text().replace("require_secure_aggregation = false",
                                                         "require_secure_aggregation = true"))
        for path in [data, *data.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)

        # 1. the consortium: its CA and the server's certificate
        code, output = run_cli(readme_command("fedmm", "keys", "init")[1:], cwd=consortium)
        assert code == 0, output
        keys = consortium / "keys"
        # 2. each hospital: its own node key (hospital-4 is never allowed by the server)
        for i, place in hospital.items():
            command = substitute(readme_command("fedmm", "keys", "hospital"),
                                 {"hospital-1": f"hospital-{i}"})
            code, output = run_cli(command[1:], cwd=place)
            assert code == 0, output
            shutil.copy(keys / "ca.crt", place / "ca.crt")
        # 3. each hospital's roster: the other hospitals' .pub files, received from them
        roster = readme_command("fedmm", "keys", "roster")
        for i, place in hospital.items():
            others = [j for j in (1, 2, 3) if j != i]
            for j in others:
                shutil.copy(hospital[j] / "keys" / f"hospital-{j}.pub", place)
            command = [*substitute(roster[:4], {"/data/site": str(data / f"site-0{i}")}),
                       *(f"hospital-{j}.pub" for j in others)]
            assert roster[4:] == ["hospital-2.pub", "hospital-3.pub"]  # what it replaces
            code, output = run_cli(command[1:], cwd=place)
            assert code == 0 and "SHA256:" in output, output
        (server_dir / "keys").mkdir()
        for name in ("ca.crt", "server.crt", "server.key"):
            shutil.copy(keys / name, server_dir / "keys" / name)
        for i in (1, 2, 3):
            shutil.copy(hospital[i] / "keys" / f"hospital-{i}.pub", server_dir)
        (server_dir / "run.toml").write_text(RUN_CONFIG)
        result["hospital_dirs"] = hospital

        # 4. the server
        server_args = [*substitute(readme_command("fedmm", "server"),
                                   {README_PORT: port})[1:],
                       "--test-data", str(data / "test")]
        server = CliRun([*server_args, "--wait-for-sites", "90"], cwd=server_dir)
        runs.append(server)
        wait_until(lambda: "waiting for hospitals" in server.output(), timeout=120,
                   what="the server to start")
        run_dir = server_dir / "runs" / "study-1"
        address = f"{SERVER_NAME}:{port}"

        # network attacker: only ca.crt, a fresh FLWR_HOME
        stranger = stranger_home(root, address=address, ca=keys / "ca.crt")
        result["stranger_ls"] = flwr(["ls", "target"], flwr_home=stranger,
                                     prefix=hosts.prefix())
        result["stranger_register"] = flwr(
            ["supernode", "register", str(hospital[4] / "keys" / "hospital-4.pub"), "target"],
            flwr_home=stranger, prefix=hosts.prefix())
        result["stranger_run"] = submit_intruder(
            flwr_home=stranger, connection="target", marker_dir=root / "markers-stranger",
            wait_for_nodes=1, prefix=hosts.prefix())
        result["stranger_runtime"] = https_post(
            f"https://{address}/v1/runtime/acquire-task", keys / "ca.crt",
            prefix=hosts.prefix())
        # the operator submits a foreign app to its own SuperLink (the server's FLWR_HOME)
        result["operator_run"] = submit_intruder(
            flwr_home=run_dir / ".flwr", connection="fedmm",
            marker_dir=root / "markers-operator", wait_for_nodes=3)
        result["markers_operator"] = root / "markers-operator"

        # 5. the hospitals, through the server's name (a local user watches the process table
        # for task tokens meanwhile, to the end of the resumed run, and squats the name the old
        # worker would have used)
        thief_stop = root / "thief-stop"
        thief = start_as_nobody(root, TOKEN_THIEF, "400", str(thief_stop))
        background.append(thief)
        squat = start_as_nobody(root, OLD_WORKER_SQUAT, str(data / "site-02" / ".fedmm"), "600")
        background.append(squat)
        assert squat.stdout is not None and squat.stdout.readline().strip() == "squatting"
        clients: dict[int, CliRun] = {}
        for i in (1, 2, 3):
            site = data / f"site-0{i}"
            validate = substitute(readme_command("fedmm", "validate-data"),
                                  {"/data/site": str(site)})
            code, output = run_cli(validate[1:], cwd=hospital[i])
            assert code == 0, output
            command = substitute(readme_command("fedmm", "client"), {
                "/data/site": str(site), README_PORT: port, "hospital-1": f"hospital-{i}"})
            clients[i] = CliRun(command[1:], cwd=hospital[i], prefix=hosts.prefix())
            runs.append(clients[i])
        result["clients"] = clients
        # an unregistered hospital and one with another CA, both at once (each is told why)
        unregistered = CliRun(
            ["client", "--data", str(data / "site-04"), "--server", address, "--ca", "ca.crt",
             "--key", "keys/hospital-4.key", "--registration-wait", "0"],
            cwd=hospital[4], prefix=hosts.prefix())
        runs.append(unregistered)
        other = folder(root, "other-ca")
        assert run_cli(["keys", "init", "keys", "--server-name", SERVER_NAME], cwd=other)[0] == 0
        wrong_ca = CliRun(
            ["client", "--data", str(data / "site-01"), "--server", address,
             "--ca", str(other / "keys" / "ca.crt"), "--key",
             str(hospital[1] / "keys" / "hospital-1.key"), "--state-dir", str(root / "st")],
            cwd=other, prefix=hosts.prefix())
        runs.append(wrong_ca)
        result["unregistered"] = (unregistered.wait(120), unregistered.output())
        result["wrong_ca"] = (wrong_ca.wait(60), wrong_ca.output())

        # a local user at hospital 1, while it serves
        state = data / "site-01" / ".fedmm"
        wait_until(lambda: "joining as a SuperNode" in clients[1].output(), timeout=120,
                   what="hospital 1 to join")
        wait_until(lambda: (state / "runtime" / "api.sock").exists(), timeout=60,
                   what="hospital 1's runtime socket")
        attack = as_nobody(root, LOCAL_USER, str(state))
        result["local_user"] = json.loads(attack.strip().splitlines()[-1])
        result["no_secret_acquire"] = runtime_request(
            state / "runtime" / "api.sock", "/v1/runtime/acquire-task", body=acquire_request())
        result["guessed_token"] = runtime_request(
            state / "runtime" / "api.sock", "/v1/runtime/pull-task-input", token="ab" * 64)

        def third_site_round_two() -> str:
            """Its round-2 ledger entry: ``reserved`` once its keys are shared and DP-SGD runs,
            ``sent`` once its masked update is on its way."""
            with contextlib.suppress(ValueError, OSError):
                spend = PrivacyLedger(data / "site-03" / ".fedmm").spend("deploy-e2e")
                for entry in spend.rounds if spend is not None else []:
                    if entry["round"] == 2:
                        return entry["status"]
            return ""

        wait_until(third_site_round_two, timeout=300, what="round 2 training", interval=0.05)
        freeze(clients[3], str(data / "site-03"))  # then read what it had done, then kill
        result["site_03_round_two_when_killed"] = third_site_round_two()
        kill_hard(clients[3], str(data / "site-03"))
        metrics = run_dir / "metrics.jsonl"
        wait_until(lambda: metrics.exists() and len(read_jsonl(metrics)) >= 2, timeout=300,
                   what="round 2 to end")
        kill_hard(server, str(server_dir / "keys" / "server.key"))
        result["first_output"] = server.output()
        assert not (run_dir / "summary.json").exists(), "the run ended before the kill"
        # hospital 3 stays dead: the resumed run goes on with the two that rejoin
        restarted = CliRun([*server_args, "--resume", "--wait-for-sites", "3"],
                           cwd=server_dir)
        runs.append(restarted)
        result["code"] = restarted.process.wait(timeout=400)
        result["output"] = restarted.output()
        thief_stop.touch()
        result["thief"] = json.loads(thief.communicate(timeout=60)[0].strip().splitlines()[-1])
        result["run_dir"], result["data"] = run_dir, data

        # the operator's own SuperLink, with the consortium's certificates, on the same port
        result["own_superlink"] = _operator_superlink(
            root=root, hosts=hosts, consortium_keys=keys, port=port, client=clients[1],
            public_key=server_dir / "hospital-1.pub")
    except BaseException:
        stop_everything(root, [*runs, *background])
        shutil.rmtree(root, ignore_errors=True)
        raise
    # Everything is recorded: stop it now, not when the session ends (left running, the
    # hospitals' reconnect loops took CPU from every later test); the folder stays for the tests.
    stop_everything(root, [*runs, *background])
    try:
        yield result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def stop_everything(root: Path, started: list[Any]) -> None:
    """Stop what a deployment fixture started, newest first (a CLI run, an attacker running as
    ``nobody``, any other process group), then anything still naming its folder."""
    for process in reversed(started):
        with contextlib.suppress(Exception):
            if isinstance(process, CliRun):
                process.stop()
            elif process.args and "setpriv" in str(process.args[0]):
                process.kill()  # another account's process: no group of ours to signal
            else:
                processes.stop(process)
    for pid in processes.pids_mentioning(str(root)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def operator_certificate(consortium_keys: Path, out: Path) -> tuple[Path, Path]:
    """A server certificate from the consortium's CA that also names 127.0.0.1, as an operator
    who holds ca.key can issue (Flower's own SuperLink needs it for its local ServerApp)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from common.pki import make_server_certificate

    ca_key = serialization.load_pem_private_key((consortium_keys / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((consortium_keys / "ca.crt").read_bytes())
    key, cert = make_server_certificate(ca_key=ca_key, ca_cert=ca_cert,  # type: ignore[arg-type]
                                        hosts=[SERVER_NAME, "127.0.0.1"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return out / "server.crt", out / "server.key"


def _operator_superlink(*, root: Path, hosts: Hosts, consortium_keys: Path, port: str,
                        client: CliRun, public_key: Path) -> dict[str, Any]:
    """A SuperLink the operator starts by hand with the consortium's CA on the server's port
    (as the old launcher did), and a foreign run on it: hospital 1's client reconnects to it by
    itself."""
    home = folder(root, "operator-home")
    cert, key = operator_certificate(consortium_keys, home / "tls")
    superlink = processes.start(
        [processes.flower_command("flower-superlink"), "--ssl-ca-certfile",
         str(consortium_keys / "ca.crt"), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
         "--enable-supernode-auth", "--disable-runtime-dependency-installation",
         "--host", "127.0.0.1", "--port", port],
        env=flwr_env(home), log=(root / "operator-superlink.log").open("ab"), cwd=home)
    try:
        assert processes.wait_for_port("127.0.0.1", int(port), timeout=60, process=superlink)
        operator = stranger_home(root, address=f"{SERVER_NAME}:{port}",
                                 ca=consortium_keys / "ca.crt")
        registered = flwr(["supernode", "register", str(public_key), "target"],
                          flwr_home=operator, prefix=hosts.prefix())
        refused_before = client.output().count("refused run")
        marker_dir = root / "markers-own-superlink"
        submitted = submit_intruder(flwr_home=operator, connection="target",
                                    marker_dir=marker_dir, wait_for_nodes=1,
                                    prefix=hosts.prefix())
        refused = wait_until(lambda: client.output().count("refused run") > refused_before,
                             timeout=180, what="hospital 1 to refuse the foreign run")
        wait_until(lambda: (marker_dir / "server-result.json").exists(), timeout=120,
                   what="the foreign ServerApp's result")
        return {"registered": registered, "submitted": submitted, "refused": refused,
                "marker_dir": marker_dir}
    finally:
        processes.stop(superlink)
