import pytest

from client.site import resolve_site, site_state_of
from common.config import ConfigError


def test_state_folder_defaults_inside_the_data_folder_and_can_move(tmp_path) -> None:
    assert site_state_of({"data-dir": str(tmp_path)}, None).root == tmp_path / ".fedmm"
    assert site_state_of({"data-dir": "x", "state-dir": str(tmp_path / "s")}, None).root == \
        tmp_path / "s"
    assert site_state_of({"partition-id": 1}, ["a", str(tmp_path)]).root == tmp_path / ".fedmm"


def test_the_state_folder_is_known_even_when_the_policy_is_broken(tmp_path) -> None:
    (tmp_path / "policy.toml").write_text("max_epsilon = -1\n")
    with pytest.raises(ConfigError, match="max_epsilon"):
        resolve_site({"data-dir": str(tmp_path)}, None)
    assert site_state_of({"data-dir": str(tmp_path)}, None).root == tmp_path / ".fedmm"


def test_a_node_without_a_data_folder_is_told_how_to_start() -> None:
    with pytest.raises(ConfigError, match="--data SITE_DIR"):
        site_state_of({}, None)
