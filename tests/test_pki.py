import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from common.pki import (
    KeyFileError,
    check_private_key,
    check_public_key,
    hospital_names,
    init_keys,
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
