"""Paths another account could change are refused, whatever the check is called on."""

import os
import stat

import pytest

from common.file_safety import UnsafePathError, check_not_writable_by_others, own_private_folder

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to nobody")


def test_a_folder_writable_by_others_is_refused_with_the_fix(tmp_path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "site").mkdir()
    with pytest.raises(UnsafePathError, match=r"shared is writable by other accounts.*go-w"):
        check_not_writable_by_others(shared / "site")


def test_a_sticky_folder_above_is_fine(tmp_path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    own_private_folder(sticky / "state")
    assert stat.S_IMODE((sticky / "state").stat().st_mode) == 0o700


@needs_root
def test_a_folder_of_another_account_above_is_refused(tmp_path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UnsafePathError, match="belongs to uid 65534"):
        own_private_folder(theirs / "state")


def test_a_link_in_place_of_the_folder_is_refused(tmp_path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="not a folder"):
        own_private_folder(tmp_path / "state")
