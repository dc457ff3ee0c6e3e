"""A hospital serves a run only when its bundle is, file for file, this installation's."""

from __future__ import annotations

import io
import tomllib
import zipfile
from importlib.metadata import version

import pytest
from flwr.cli.build import build_fab_from_disk

from common.app_bundle import APP_DIR, MAX_BUNDLE_BYTES, ForeignAppError, check_bundle
from tests.deployment import INTRUDER_APP


def _zip(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _files(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_bundle_fedmm_server_submits_passes() -> None:
    check_bundle(build_fab_from_disk(APP_DIR))


def test_the_same_files_compressed_otherwise_pass() -> None:
    """Two machines whose zlib differs build different archive bytes of the same files."""
    check_bundle(_zip(_files(build_fab_from_disk(APP_DIR)), zipfile.ZIP_STORED))


def test_a_foreign_app_is_refused_naming_what_differs() -> None:
    with pytest.raises(ForeignAppError, match=r"foreign files intruder/.*changed .*pyproject"):
        check_bundle(build_fab_from_disk(INTRUDER_APP))


def test_one_added_file_or_one_changed_byte_is_refused() -> None:
    ours = _files(build_fab_from_disk(APP_DIR))
    with pytest.raises(ForeignAppError, match=r"foreign files client/app\.py"):
        check_bundle(_zip({**ours, "client/app.py": b"import os; os.system('id')"}))
    changed = {**ours, "pyproject.toml": ours["pyproject.toml"].replace(b"client.app:app",
                                                                         b"client.apq:app")}
    with pytest.raises(ForeignAppError, match=r"changed pyproject\.toml"):
        check_bundle(_zip(changed))


def test_garbage_and_archives_that_unpack_large_are_refused() -> None:
    with pytest.raises(ForeignAppError, match="not a readable archive"):
        check_bundle(b"not a zip")
    with pytest.raises(ForeignAppError, match="unpacks to more than"):
        check_bundle(_zip({"big": b"\0" * (MAX_BUNDLE_BYTES + 1)}))


def test_the_bundle_names_this_fedmm_version_and_apps() -> None:
    config = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    assert config["project"]["version"] == version("fedmm")
    assert config["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "server.deployment:app", "clientapp": "client.app:app"}


def test_the_run_config_keys_are_the_launchers() -> None:
    from server import deployment

    config = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    assert set(config["tool"]["flwr"]["app"]["config"]) == {
        deployment.OUT_DIR, deployment.RESUME, deployment.EXPECTED_SITES,
        deployment.WAIT_FOR_SITES_S, deployment.TEST_DIR}


def test_a_small_bundle_that_unpacks_huge_is_refused_without_unpacking_it() -> None:
    """A bzip2 entry declaring 100 bytes that inflates to 256 MiB: refused by its compression,
    and a deflate bomb is cut at the limit, long before it would inflate."""
    import resource
    import tracemalloc

    ours = _files(build_fab_from_disk(APP_DIR))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("pyproject.toml", b"\0" * (256 << 20))
    with pytest.raises(ForeignAppError, match="compression 12"):
        check_bundle(bomb.getvalue())
    deflated = io.BytesIO()
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(".info/CONTENT", ours[".info/CONTENT"])
        archive.writestr("pyproject.toml", b"\0" * (64 << 20))
    tracemalloc.start()
    with pytest.raises(ForeignAppError, match=r"more than|bytes;"):
        check_bundle(deflated.getvalue())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20, peak
    assert resource.getrlimit(resource.RLIMIT_AS)  # (the run stayed in memory)


@pytest.mark.parametrize("flaw", ["encrypted", "unknown-compression", "duplicate"])
def test_malformed_archives_are_refusals_not_crashes(flaw: str) -> None:
    ours = _files(build_fab_from_disk(APP_DIR))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in ours.items():
            archive.writestr(zipfile.ZipInfo(name), content)
        if flaw == "duplicate":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                archive.writestr("pyproject.toml", b"[tool]\n")
    data = buffer.getvalue()
    index = data.rfind(b"PK\x01\x02")  # the last central directory entry
    if flaw == "unknown-compression":  # its method field: 99
        data = data[:index + 10] + (99).to_bytes(2, "little") + data[index + 12:]
    if flaw == "encrypted":  # its flags: bit 0, encrypted
        flags = int.from_bytes(data[index + 8:index + 10], "little") | 1
        data = data[:index + 8] + flags.to_bytes(2, "little") + data[index + 10:]
    with pytest.raises(ForeignAppError):
        check_bundle(data)
