import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from common.pki import (
    KeyFileError,
    check_private_key,
    check_public_key,
    hospital_key,
    hospital_names,
    init_keys,
    make_loopback_tls,
)


def test_keys_init_writes_a_ca_a_server_certificate_and_node_keys(tmp_path) -> None:
    layout = init_keys(tmp_path / "keys", server_hosts=["fl.example.org", "127.0.0.1"],
                       hospitals=["a", "b"])
    ca = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(layout.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp384r1"
    for name in ("a", "b"):
        check_private_key(layout.hospital_key(name))
        check_public_key(layout.hospital_public(name))
        assert layout.hospital_public(name).read_text().startswith("ecdsa-sha2-nistp384 ")
    for private in (layout.ca_key, layout.server_key, layout.hospital_key("a")):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_existing_keys_are_kept_unless_forced(tmp_path) -> None:
    layout = init_keys(tmp_path, server_hosts=["localhost"], hospitals=["a"])
    before = layout.hospital_key("a").read_bytes()
    with pytest.raises(KeyFileError, match=r"already exists.*--force"):
        init_keys(tmp_path, server_hosts=["localhost"], hospitals=["a"])
    assert layout.hospital_key("a").read_bytes() == before
    init_keys(tmp_path, server_hosts=["localhost"], hospitals=["a"], force=True)
    assert layout.hospital_key("a").read_bytes() != before


def test_hospital_names() -> None:
    assert hospital_names(count=2, names=[]) == ["hospital-1", "hospital-2"]
    assert hospital_names(count=None, names=["st-mary"]) == ["st-mary"]
    for bad in (["../x"], ["a", "a"], []):
        with pytest.raises(KeyFileError):
            hospital_names(count=None, names=bad)


def test_wrong_key_files_are_named(tmp_path) -> None:
    layout = init_keys(tmp_path, server_hosts=["localhost"], hospitals=["a"])
    with pytest.raises(KeyFileError, match="not an OpenSSH public key"):
        check_public_key(layout.ca_cert)
    with pytest.raises(KeyFileError, match="not an OpenSSH private key"):
        check_private_key(layout.hospital_public("a"))
    with pytest.raises(KeyFileError, match="not found"):
        check_public_key(tmp_path / "missing.pub")


def test_a_hospital_makes_its_own_key_pair(tmp_path) -> None:
    private, public = hospital_key(tmp_path / "mine", name="st-mary")
    check_private_key(private)
    check_public_key(public)
    assert (private.name, public.name) == ("st-mary.key", "st-mary.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    with pytest.raises(KeyFileError, match="already exists"):
        hospital_key(tmp_path / "mine", name="st-mary")


def test_replacing_a_key_never_follows_a_planted_symlink(tmp_path) -> None:
    """--force renames a fresh 0600 file over the path: a symlink planted there is replaced,
    not written through (and no moment passes with the key under another mode)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    victim.chmod(0o644)
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "h.key").symlink_to(victim)
    private, _ = hospital_key(folder, name="h", force=True)
    assert victim.read_text() == "keep me" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not private.is_symlink() and stat.S_IMODE(private.lstat().st_mode) == 0o600
    check_private_key(private)


def test_keys_init_without_hospitals_makes_only_the_ca_and_server(tmp_path) -> None:
    layout = init_keys(tmp_path, server_hosts=["fl.example.org"], hospitals=[])
    assert layout.ca_cert.is_file() and layout.server_key.is_file()
    assert not (tmp_path / "hospitals").exists()


def test_the_loopback_certificate_names_127_0_0_1(tmp_path) -> None:
    tls = make_loopback_tls(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600
