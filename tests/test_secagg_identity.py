"""Node keys sign secure-aggregation messages; a roster names the peers a site trusts."""

from __future__ import annotations

import pytest

from common.pki import hospital_key
from common.secagg.identity import (
    IdentityError,
    Roster,
    Signer,
    add_to_roster,
    canonical_public,
    fingerprint,
    verify,
)


def test_a_signature_covers_its_purpose_and_fields_only() -> None:
    signer = Signer.generate()
    signature = signer.sign("advert", b"fields")
    assert verify(signer.public, "advert", b"fields", signature)
    assert not verify(signer.public, "view", b"fields", signature)  # domain-separated
    assert not verify(signer.public, "advert", b"other", signature)
    assert not verify(Signer.generate().public, "advert", b"fields", signature)
    assert not verify(b"not a key", "advert", b"fields", signature)


def test_the_hospitals_node_key_is_its_signing_key(tmp_path) -> None:
    private, public = hospital_key(tmp_path, name="hospital-1")
    signer = Signer.from_file(private)
    assert signer.public == canonical_public(public.read_bytes())
    assert fingerprint(public.read_bytes()).startswith("SHA256:")
    (tmp_path / "broken.key").write_text("nonsense")
    with pytest.raises(IdentityError, match=r"broken\.key: not a private key"):
        Signer.from_file(tmp_path / "broken.key")
    with pytest.raises(IdentityError, match="cannot read"):
        Signer.from_file(tmp_path / "missing.key")


def test_a_roster_folder_holds_the_peers_public_keys(tmp_path) -> None:
    peers = [hospital_key(tmp_path / "keys", name=f"h{i}")[1] for i in (1, 2)]
    own_private, own_public = hospital_key(tmp_path / "keys", name="me")
    folder = tmp_path / "site" / "roster"
    with pytest.raises(IdentityError, match="roster folder not found"):
        Roster.from_folder(folder)
    added = add_to_roster(folder, [*peers, own_public],
                          own=Signer.from_file(own_private).public)
    assert [p.name for p, _ in added] == ["h1.pub", "h2.pub"]  # its own key is skipped
    roster = Roster.from_folder(folder)
    assert all(p.read_bytes() in roster for p in peers)
    assert own_public.read_bytes() not in roster
    assert add_to_roster(folder, peers[:1])[0][1] == added[0][1]  # again: same, no error
    (tmp_path / "copy.pub").write_bytes(peers[0].read_bytes())
    with pytest.raises(IdentityError, match=r"already in the roster as h1\.pub"):
        add_to_roster(folder, [tmp_path / "copy.pub"])
    (tmp_path / "bad.pub").write_text("ssh-ed25519 AAAA")
    with pytest.raises(IdentityError, match=r"bad\.pub: not an OpenSSH public key"):
        add_to_roster(folder, [tmp_path / "bad.pub"])
    (folder / "junk.pub").write_text("junk")
    with pytest.raises(IdentityError, match=r"junk\.pub: not an OpenSSH public key"):
        Roster.from_folder(folder)
