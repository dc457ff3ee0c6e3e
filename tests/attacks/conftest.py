"""The weakened deployment, started once for every attack test that compares against it."""

from __future__ import annotations

import pytest

from tests.attacks.weakened import weakened_deployment


@pytest.fixture(scope="session")
def weakened():
    yield from weakened_deployment()
