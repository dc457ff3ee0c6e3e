from pathlib import Path

import pytest

from client.policy import RoundRequest, SitePolicy, check_round, load_policy
from common.config import ConfigError

OK = RoundRequest(private=True, delta=1e-5, noise_multiplier=1.0, max_grad_norm=1.0,
                  modalities=("image", "text", "audio"), epsilon_spent=1.0, epsilon_after=2.0)


def _with(**changes: object) -> RoundRequest:
    return RoundRequest(**{**OK.__dict__, **changes})


def test_round_within_policy_runs() -> None:
    assert check_round(SitePolicy(), OK) is None


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (_with(epsilon_after=10.5), "budget-exhausted", "would reach 10.500 > policy max 10"),
        (_with(delta=1e-3), "delta-too-large", "delta 0.001 > policy 1e-05"),
        (_with(noise_multiplier=0.2), "noise-too-small", "0.200 < policy 0.500"),
        (_with(max_grad_norm=50.0), "clip-too-large", "max_grad_norm 50 > policy 10"),
        (_with(private=False), "non-private-refused", "without DP"),
    ],
)
def test_each_rule_refuses_with_its_code(request_: RoundRequest, code: str, words: str) -> None:
    refusal = check_round(SitePolicy(), request_)
    assert refusal is not None and refusal.code == code and words in refusal.reason


def test_modalities_not_allowed() -> None:
    refusal = check_round(SitePolicy(allowed_modalities=("image",)), OK)
    assert refusal is not None and refusal.code == "modality-not-allowed"
    assert "audio" in refusal.reason


def test_load_policy_file_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("max_epsilon = 3.0\nallow_non_private = true\n")
    policy = load_policy(path)
    assert policy.max_epsilon == 3.0 and policy.allow_non_private
    assert load_policy(None) == SitePolicy()
    path.write_text("max_epsilon = -1\n")
    with pytest.raises(ConfigError, match="max_epsilon = -1"):
        load_policy(path)
    path.write_text("max_epsilonn = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'max_epsilonn'"):
        load_policy(path)
    with pytest.raises(ConfigError, match="not found"):
        load_policy(tmp_path / "none.toml")


def test_sites_require_secure_aggregation_unless_their_policy_says_otherwise(
        tmp_path: Path) -> None:
    assert SitePolicy().require_secure_aggregation
    path = tmp_path / "policy.toml"
    path.write_text("require_secure_aggregation = false\n")
    assert not load_policy(path).require_secure_aggregation
