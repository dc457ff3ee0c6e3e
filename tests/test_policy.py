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


def test_the_total_budget_binds_whatever_the_model_is_called() -> None:
    refusal = check_round(SitePolicy(max_total_epsilon=5.0),
                          _with(model_id="new-name", epsilon_spent=0.0, epsilon_after=1.0,
                                total_epsilon_after=5.5))
    assert refusal is not None and refusal.code == "budget-exhausted"
    assert "a new model_id does not reset" in refusal.reason


def test_only_allowed_model_ids_train_and_modalities_bind_non_private_runs_too() -> None:
    policy = SitePolicy(allowed_model_ids=("study-1",), allow_non_private=True,
                        allowed_modalities=("image",))
    assert check_round(policy, _with(model_id="study-2")).code == "model-not-allowed"
    assert check_round(policy, _with(model_id="study-1", private=False)).code == \
        "modality-not-allowed"


def test_evaluation_rules() -> None:
    from client.policy import check_evaluation

    dp = _with(model_id="m")
    assert check_evaluation(SitePolicy(), dp, 100).code == "evaluation-not-private"
    noisy = SitePolicy(evaluation_noise_multiplier=5.0)
    assert check_evaluation(noisy, dp, 100) is None
    assert check_evaluation(noisy, dp, 19).code == "too-few-eval-rows"
    assert check_evaluation(noisy, _with(total_epsilon_after=11.0), 100).code == \
        "budget-exhausted"
    assert check_evaluation(SitePolicy(), _with(private=False), 100).code == \
        "non-private-refused"
    assert check_evaluation(SitePolicy(allow_non_private=True), _with(private=False), 100) \
        is None
