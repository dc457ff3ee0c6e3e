"""The suite's order (tests/conftest.py): which tests need the machine to themselves. A fixture
named like a deadline fixture makes a test one; a ``parametrize`` argument of that name does
not, unless it is indirect (then the fixture runs). The fixture here stands in for the real
``weakened`` deployment (tests/attacks/conftest.py)."""

from __future__ import annotations

import pytest

from tests.conftest import DEADLINE_FIXTURES, direct_parameters, needs_a_quiet_machine

assert "weakened" in DEADLINE_FIXTURES


@pytest.fixture
def weakened(request: pytest.FixtureRequest) -> object:
    return getattr(request, "param", None)


def test_a_deadline_fixture_makes_a_test_need_a_quiet_machine(
        request: pytest.FixtureRequest, weakened: object) -> None:
    assert needs_a_quiet_machine(request.node)


@pytest.mark.parametrize("weakened", [False, True])
def test_a_parametrize_argument_of_that_name_does_not(request: pytest.FixtureRequest,
                                                     weakened: bool) -> None:
    assert direct_parameters(request.node) == {"weakened"}
    assert not needs_a_quiet_machine(request.node)


@pytest.mark.parametrize("weakened", [1], indirect=True)
def test_an_indirect_one_does(request: pytest.FixtureRequest, weakened: object) -> None:
    assert weakened == 1 and direct_parameters(request.node) == set()
    assert needs_a_quiet_machine(request.node)


@pytest.mark.parametrize(("other", "weakened"), [(1, 2)], indirect=["weakened"])
def test_only_the_indirect_names_of_a_mixed_one_count(request: pytest.FixtureRequest,
                                                      other: int, weakened: object) -> None:
    assert direct_parameters(request.node) == {"other"}
    assert needs_a_quiet_machine(request.node)
