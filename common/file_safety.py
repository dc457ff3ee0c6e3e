"""Folders and files that only this account may change (the rules OpenSSH's StrictModes keeps).

A hospital's state folder holds its ledger, secrets and runtime socket; its data folder and
policy decide what is trained and how privately. If another account could rename a parent
folder or rewrite the policy, every check fedmm makes by path could be undone after it was
made. So ``fedmm client`` (and ``fedmm keys hospital``) refuse to start unless each such path
and every folder above it belongs to root or to this account and no one else can write it (a
sticky folder such as /tmp excepted, where nobody may rename another's entries).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafePathError(ValueError):
    """A path another account could change; the message names it and what to do."""


def _owner_ok(info: os.stat_result) -> bool:
    return info.st_uid in (0, os.getuid())


def check_not_writable_by_others(path: Path) -> None:
    """``path`` (which must exist) and every folder above it belong to root or this account,
    and nobody else can write to them."""
    path = Path(path).resolve()
    for place in [path, *path.parents]:
        info = place.stat()
        if not _owner_ok(info):
            raise UnsafePathError(f"{place} belongs to uid {info.st_uid}, not to root or this "
                                  f"account (uid {os.getuid()}); another user could change "
                                  f"{path} through it: move the folder somewhere of your own")
        writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky_folder = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
        if writable_by_others and not (sticky_folder and place != path):
            raise UnsafePathError(f"{place} is writable by other accounts (mode "
                                  f"{stat.S_IMODE(info.st_mode):o}); another user could change "
                                  f"{path} through it: chmod go-w {place}")


def own_private_folder(path: Path) -> None:
    """``path`` exists, is a folder of this account's (not a link), has mode 0700, and no other
    account can change anything above it."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(f"{path}: not a folder (a link or a file); remove it and start "
                              "again")
    if info.st_uid != os.getuid():
        raise UnsafePathError(f"{path} belongs to uid {info.st_uid}, not to this account "
                              f"(uid {os.getuid()}); another user may have planted it: remove "
                              "it, or use a folder of your own")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    check_not_writable_by_others(path)
