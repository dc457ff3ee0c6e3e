"""The docker/ deployment files, checked without a Docker engine: hadolint on the Dockerfiles,
the compose-spec JSON schema on compose.yml, and every path, port and command they name against
the repository and the real CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
import yaml

from fedmm.cli import app

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
DOCKERFILES = {"server": DOCKER / "server.Dockerfile", "client": DOCKER / "hospital.Dockerfile"}
BIN = Path(sys.executable).parent


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def parse(subcommand: str, args: list[str]) -> dict:
    """The CLI's own parser: unknown flags or bad values raise."""
    command = typer.main.get_command(app).commands[subcommand]  # type: ignore[attr-defined]
    return command.make_context(subcommand, list(args), resilient_parsing=False).params


def dockerfile_json(text: str, instruction: str) -> list[str]:
    import json

    match = re.search(rf"^{instruction}\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert match, instruction
    return json.loads(match.group(1))


def test_dockerfiles_pass_hadolint() -> None:
    result = subprocess.run([str(BIN / "hadolint"), *map(str, DOCKERFILES.values())],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                             "vendor.compose-spec", str(DOCKER / "compose.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("role", ["server", "client"])
def test_each_image_runs_the_cli_with_a_valid_default_command(role: str) -> None:
    text = DOCKERFILES[role].read_text()
    assert dockerfile_json(text, "ENTRYPOINT") == ["fedmm", role]
    parse(role, dockerfile_json(text, "CMD"))
    for source in re.findall(r"^COPY\s+(\S+)", text, re.MULTILINE):
        assert (REPO / source).exists(), f"{DOCKERFILES[role].name}: COPY {source}"


def test_every_compose_service_command_parses_and_its_files_are_mounted() -> None:
    services = compose()["services"]
    roles = {"server.Dockerfile": "server", "hospital.Dockerfile": "client"}
    assert set(services) == {"server", "hospital-1", "hospital-2", "hospital-3"}
    for name, service in services.items():
        dockerfile = service["build"]["dockerfile"]
        assert (DOCKER / service["build"]["context"] / dockerfile).is_file(), name
        role = roles[Path(dockerfile).name]
        params = parse(role, [str(a) for a in service["command"]])
        mounts = {v.split(":")[1]: v for v in service["volumes"]}

        def mounted(path, *, read_only: bool = False, name=name, mounts=mounts) -> None:
            path = Path(path)
            hits = [t for t in mounts if str(path) == t or str(path).startswith(t + "/")]
            assert hits, f"{name}: {path} is not inside any volume"
            if read_only:
                assert mounts[hits[0]].endswith(":ro"), f"{name}: {hits[0]} must be read-only"

        if role == "server":
            mounted(params["config_file"], read_only=True)
            for key in ("ca.crt", "server.crt", "server.key"):
                mounted(Path(params["certs"]) / key, read_only=True)
            assert len(params["allow"]) == 3
            for key in params["allow"]:
                mounted(key, read_only=True)
            mounted(params["out"])
            assert service["ports"] == [f"{params['port']}:{params['port']}"]
            assert f"EXPOSE {params['port']}" in DOCKERFILES["server"].read_text()
        else:
            mounted(params["data"], read_only=True)
            mounted(params["ca"], read_only=True)
            mounted(params["key"], read_only=True)
            mounted(params["state_dir"])
            host, port = params["server"].rsplit(":", 1)
            assert host in services and int(port) == parse(
                "server", [str(a) for a in services[host]["command"]])["port"]


def test_host_side_files_of_the_compose_file_are_the_ones_the_readme_makes() -> None:
    readme = (REPO / "README.md").read_text()
    assert "fedmm keys init docker/keys --server-name server" in readme
    assert "fedmm demo-data docker/data --sites 3" in readme
    sources = {v.split(":")[0] for s in compose()["services"].values() for v in s["volumes"]}
    relative = sorted(s for s in sources if s.startswith("./"))
    assert relative  # keys, data and run.toml come from the host
    for source in relative:
        assert source.split("/")[1] in {"keys", "data", "run.toml"}, source
    assert (DOCKER / "run.example.toml").is_file()


def test_unknown_flags_are_refused_by_the_parser_used_here() -> None:
    with pytest.raises(click.UsageError):
        parse("client", ["--data", "/d", "--server", "s:1", "--ca", "c", "--key", "k",
                         "--no-such-flag"])
