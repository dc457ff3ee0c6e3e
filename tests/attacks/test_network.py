"""A network attacker who holds the public ca.crt and reaches the server's port can list, start
or register nothing, nor reach the runtime API: only Flower's Fleet API is served there.
The same requests succeed against Flower's SuperLink on the public port (the old launcher)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def refused(attempt: tuple[int, dict, str], route: str) -> bool:
    """Flower's CLI answered that the route does not exist on this port."""
    _, answer, output = attempt
    return answer.get("success") is False and "404 Not Found' for url 'https://" in output \
        and route in output


def test_a_stranger_cannot_list_runs(deployment, weakened) -> None:
    assert refused(deployment["stranger_ls"], "/v1/control/list-runs")
    code, answer, output = weakened["stranger_ls"]
    assert code == 0 and answer["success"] is True, output


def test_a_stranger_cannot_register_a_node(deployment, weakened) -> None:
    assert refused(deployment["stranger_register"], "/v1/control/register-node")
    code, answer, output = weakened["stranger_register"]
    assert code == 0 and answer["node-id"], output


def test_a_stranger_cannot_start_a_run(deployment, weakened) -> None:
    assert refused(deployment["stranger_run"], "/v1/control/start-run")
    assert not list((deployment["root"] / "markers-stranger").glob("*"))
    code, answer, output = weakened["stranger_run"]
    assert code == 0 and answer["run-id"], output


def test_the_runtime_api_is_not_served_on_the_public_port(deployment, weakened) -> None:
    assert deployment["stranger_runtime"] == 404
    assert weakened["stranger_runtime"] == 200  # a task claimed with no secret at all
