from pathlib import Path

import pytest

from common.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    load_config,
    parse_override_pairs,
)


def test_defaults_are_valid_and_round_trip_through_json() -> None:
    config = RunConfig()
    assert RunConfig.from_json(config.to_json()) == config
    assert config.privacy.enabled and config.privacy.target_epsilon == 8.0
    assert config.privacy.delta == 1e-5


def test_toml_file_then_cli_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[training]\nrounds = 9\n[model]\nfusion = "late"\n')
    config = load_config(path, {"training.rounds": "3", "privacy.target_epsilon": "2.5"})
    assert config.training.rounds == 3
    assert config.model.fusion == "late"
    assert config.privacy.target_epsilon == 2.5


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"training.rounds": "-1"}, "training.rounds = -1"),
        ({"privacy.delta": "1.5"}, "privacy.delta = 1.5"),
        ({"privacy.target_epsilon": "0"}, "privacy.target_epsilon = 0"),
        ({"privacy.noise_multiplier": "-0.5"}, "privacy.noise_multiplier = -0.5"),
        ({"model.fusion": '"early"'}, "model.fusion = 'early'"),
        ({"training.roundz": "3"}, "unknown key 'training.roundz'"),
        ({"training.batch_size": '"many"'}, "training.batch_size = 'many'"),
    ],
)
def test_wrong_values_give_one_line_naming_key_and_value(overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_malformed_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nrounds=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_override_pairs_need_equals_sign() -> None:
    assert parse_override_pairs(["a.b=1"]) == {"a.b": "1"}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override_pairs(["training.rounds"])


def test_override_into_scalar_is_an_error() -> None:
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"model_id": "x"}, {"model_id.deep": "1"})


def test_the_readmes_configuration_block_is_the_defaults() -> None:
    """README "Configuration" shows the defaults: every key it shows is one, with its value."""
    import tomllib

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    block = section.split("```toml", 1)[1].split("```", 1)[0]
    shown = tomllib.loads(block)
    defaults = RunConfig().model_dump(mode="json")
    for key, value in shown.items():
        if isinstance(value, dict):
            for name, setting in value.items():
                assert defaults[key][name] == setting, f"{key}.{name}"
        else:
            assert defaults[key] == value, key
