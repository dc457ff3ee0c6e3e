"""The client's side of SecAgg+ as a state machine over plain data (no Flower, no torch).

Stage by stage, for client i in round ``context``, with its signing key and its :class:`Guards`
(the roster of peers it trusts and the collusion it assumes, from its own policy):

1. ``setup``: two fresh X25519 key pairs, (c_sk, c_pk) to seal shares and (s_sk, s_pk) for
   pairwise masks; the advertisement (i, c_pk, s_pk) is signed.
2. ``share_keys``: every advertisement is checked: signed by a key in the roster, one key per
   participant, its own unchanged. The neighbourhood N(i) follows from a seed over all of them
   (:mod:`.graph`); the server's threshold t must be at least ⌊(|N(i)| + 1 + c)/2⌋ + 1. Then a
   fresh 256-bit self-mask seed b_i; t-of-(|N(i)|+1) Shamir shares of b_i and of s_sk_i for
   every holder j ∈ N(i) ∪ {i}; each neighbour's pair sealed with AES-GCM under
   HKDF(X25519(c_sk_i, c_pk_j)).
3. ``open_shares`` then ``mask``: the received shares are authenticated (a tampered or misrouted
   one aborts the round for this client); the digest of the global model received is kept; the
   encoded update x_i is sent as

       y_i = x_i + PRG(b_i) + Σ_{j ∈ N(i) ∩ U2} sign(j − i) · PRG(HKDF(X25519(s_sk_i, s_pk_j))).

4. ``consistency``: the site signs the one survivor set U3 it is shown, with the digest of the
   model it received and of the advertisements it saw.
5. ``unmask``: only for that same U3, and only with a valid signature of *every* member of U3
   on it, on the model this site received and on the advertisements it saw (a server that
   showed different sets, models or participants to different sites is caught here: it cannot
   leave out a survivor's signature and still have that survivor's self mask revealed); for
   each survivor in N(i) ∪ {i} a share of its b, for each neighbour that shared keys but is not
   in U3 a share of its s_sk, never both, and only once.

Dropouts: up to |N(i)| + 1 − t sites may be lost before they send their masked input, or after
they sign U3. A site lost between the two (the seconds between its masked input and its
signature) aborts the round: the others cannot tell a lost signature from a withheld one.

The state is a plain dict (bytes, ints, lists, dicts) that the caller persists between stages.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.secagg import shamir
from common.secagg.encoding import RingEncoding, ring_add, ring_subtract
from common.secagg.graph import default_degree, graph_seed, minimum_threshold, neighbours
from common.secagg.identity import IdentityError, Roster, Signer, canonical_public, verify
from common.secagg.messages import (
    Advert,
    ConsistencyReply,
    ConsistencyRequest,
    MaskedInputRequest,
    SetupReply,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
    pack,
    view_fields,
)
from common.secagg.primitives import (
    SealError,
    agree,
    expand_mask,
    generate_key_pair,
    open_sealed,
    random_seed,
    seal,
)

State = dict[str, Any]
_HEADER = struct.Struct(">II")
ADVERT = "advert"
VIEW = "view"


class SecAggError(RuntimeError):
    """This client refuses to go on with the round; the message says why (one line)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class Guards:
    """What this site insists on in every round (its policy's, or a simulation's)."""

    roster: Roster
    max_colluding: int = 0
    min_neighbourhood: int = 2

    def with_own(self, public: bytes) -> Guards:
        """The same guards with this site's own key in the roster (a roster folder holds
        the peers' keys; the site's own advertisement is checked like everyone's)."""
        return Guards(roster=Roster.of([*self.roster.keys, public]),
                      max_colluding=self.max_colluding,
                      min_neighbourhood=self.min_neighbourhood)


def _associated(context: str, sender: int, recipient: int) -> bytes:
    return f"{context}/{sender}->{recipient}".encode()


def _expect(state: State, stage: str) -> None:
    if state.get("stage") != stage:
        raise SecAggError("secagg-out-of-order",
                          f"secure aggregation stage out of order (state: "
                          f"{state.get('stage', 'none')}, expected {stage})")


def setup(request: SetupRequest, signer: Signer) -> tuple[State, SetupReply]:
    if request.clients < 2 or request.threshold < 2:
        raise SecAggError("secagg-unsafe", "secure aggregation needs at least 2 clients and a "
                          "threshold of at least 2 (a sum of one is the update itself)")
    if not 0 <= request.index < request.clients or not 1 <= request.degree < request.clients:
        raise SecAggError("secagg-bad-setup", "index or graph degree is inconsistent")
    if request.degree < default_degree(request.clients):
        raise SecAggError("secagg-unsafe", f"graph degree {request.degree} < "
                          f"{default_degree(request.clients)} for {request.clients} sites: "
                          "small neighbourhoods need fewer shares to unmask; refused")
    try:
        RingEncoding(clip_range=request.clip_range, max_weight=request.max_weight,
                     max_clients=request.clients)
        if not math.isfinite(request.clip_range):
            raise ValueError("clip_range is not finite")
    except ValueError as error:
        raise SecAggError("secagg-bad-setup", f"encoding settings refused: {error}") from None
    encryption, masking = generate_key_pair(), generate_key_pair()
    signature = signer.sign(ADVERT, Advert.signed_fields(
        request.context, request.index, encryption.public, masking.public))
    state: State = {
        "stage": "setup", "context": request.context, "index": request.index,
        "clients": request.clients, "threshold": request.threshold, "degree": request.degree,
        "clip_range": request.clip_range, "max_weight": request.max_weight,
        "encryption_private": encryption.private, "mask_private": masking.private,
        "encryption_public": encryption.public, "mask_public": masking.public,
        "signer": signer.public, "params": _parameters_digest(request),
    }
    return state, SetupReply(encryption_key=encryption.public, mask_key=masking.public,
                             signer=signer.public, signature=signature)


def _checked_adverts(state: State, request: ShareKeysRequest, guards: Guards
                     ) -> dict[int, Advert]:
    """The advertisements, each signed by a distinct roster member, this site's unchanged."""
    adverts: dict[int, Advert] = {}
    signers: set[bytes] = set()
    for index, raw in request.adverts.items():
        try:
            advert = Advert.from_bytes(raw)
            signer = canonical_public(advert.signer)
        except (ValueError, IdentityError) as error:
            raise SecAggError("secagg-malformed", f"advertisement of client {index}: "
                              f"{error}") from None
        if advert.index != index or not 0 <= index < state["clients"]:
            raise SecAggError("secagg-bad-setup", f"advertisement of client {index} names "
                              "another index")
        if advert.signer != signer or len(advert.encryption_key) != 32 or \
                len(advert.mask_key) != 32:
            raise SecAggError("secagg-malformed", f"advertisement of client {index} is not "
                              "in canonical form (32-byte keys, a signer key without comment)")
        if signer not in guards.roster:
            raise SecAggError("secagg-unknown-peer", f"client {index} signs with a key that "
                              "is not in this site's roster; refused (the server may be "
                              "adding participants of its own)")
        fields = Advert.signed_fields(state["context"], index, advert.encryption_key,
                                      advert.mask_key)
        if not verify(signer, ADVERT, fields, advert.signature):
            raise SecAggError("secagg-bad-signature", f"client {index}'s advertisement is "
                              "not signed by its key; refused")
        if signer in signers:
            raise SecAggError("secagg-unknown-peer", f"one key signs for two participants "
                              f"(client {index}); refused")
        signers.add(signer)
        adverts[index] = advert
    me = state["index"]
    mine = adverts.get(me)
    if mine is None or (mine.encryption_key, mine.mask_key, mine.signer) != (
            state["encryption_public"], state["mask_public"], state["signer"]):
        raise SecAggError("secagg-bad-setup", "this site's own advertisement is missing or "
                          "changed; refused")
    return adverts


def share_keys(state: State, request: ShareKeysRequest,
               guards: Guards) -> tuple[State, ShareKeysReply]:
    _expect(state, "setup")
    me = state["index"]
    adverts = _checked_adverts(state, request, guards)
    seed = graph_seed(state["context"], [a.identity() for a in adverts.values()])
    graph = neighbours(state["clients"], state["degree"], seed)
    present = sorted(j for j in graph[me] if j in adverts)
    holders = len(present) + 1
    least = minimum_threshold(holders, guards.max_colluding)
    if holders < guards.min_neighbourhood:
        raise SecAggError("secagg-too-few", f"only {holders} sites in this neighbourhood; "
                          f"policy min_neighbourhood {guards.min_neighbourhood}")
    if not least <= state["threshold"] <= holders:
        raise SecAggError("secagg-unsafe", f"threshold {state['threshold']} outside "
                          f"{least}..{holders} for {holders} holders and up to "
                          f"{guards.max_colluding} colluding sites (policy "
                          "max_colluding_sites); a lower one lets a lying server unmask a "
                          "site; refused")
    self_seed = random_seed()
    holder_list = [*present, me]
    xs = [j + 1 for j in holder_list]
    seed_shares = shamir.split(self_seed, threshold=state["threshold"], xs=xs)
    key_shares = shamir.split(state["mask_private"], threshold=state["threshold"], xs=xs)
    ciphertexts = {}
    for j in present:
        key = agree(state["encryption_private"], adverts[j].encryption_key, purpose="seal",
                    context=state["context"])
        plaintext = _HEADER.pack(me, j) + seed_shares[j + 1] + key_shares[j + 1]
        ciphertexts[j] = seal(key, plaintext, associated=_associated(state["context"], me, j))
    state = {**state, "stage": "share_keys", "self_seed": self_seed, "neighbours": present,
             "adverts_digest": seed.hex(),
             "signers": {j: a.signer for j, a in adverts.items()},
             "encryption_keys": {j: adverts[j].encryption_key for j in present},
             "mask_keys": {j: adverts[j].mask_key for j in present},
             "seed_shares": {me: seed_shares[me + 1]}, "key_shares": {me: key_shares[me + 1]}}
    return state, ShareKeysReply(ciphertexts=ciphertexts)


def open_shares(state: State, request: MaskedInputRequest, received: str) -> State:
    """Authenticate and store the shares the neighbours sealed to this client, and
    ``received``: the digest of the global model and round configuration it got (what it
    trains on, so what its signature on the survivor set must cover)."""
    _expect(state, "share_keys")
    me = state["index"]
    seed_shares, key_shares = dict(state["seed_shares"]), dict(state["key_shares"])
    for sender, ciphertext in sorted(request.ciphertexts.items()):
        if sender not in state["encryption_keys"]:
            raise SecAggError("secagg-bad-share", f"share from client {sender}, who is not a "
                              "neighbour that advertised keys; round refused")
        key = agree(state["encryption_private"], state["encryption_keys"][sender],
                    purpose="seal", context=state["context"])
        try:
            plaintext = open_sealed(key, ciphertext,
                                    associated=_associated(state["context"], sender, me))
        except SealError:
            raise SecAggError("secagg-bad-share", f"share ciphertext from client {sender} "
                              "failed authentication (tampered or misrouted); round refused"
                              ) from None
        if _HEADER.unpack(plaintext[:_HEADER.size]) != (sender, me):
            raise SecAggError("secagg-bad-share", f"share from client {sender} names another "
                              "sender or recipient; round refused")
        body = plaintext[_HEADER.size:]
        seed_shares[sender] = body[:shamir.SHARE_BYTES]
        key_shares[sender] = body[shamir.SHARE_BYTES:]
    partners = sorted(request.ciphertexts)
    if len(partners) + 1 < state["threshold"]:
        raise SecAggError("secagg-too-few", f"only {len(partners)} neighbours sent shares; "
                          f"threshold {state['threshold']} cannot be met")
    return {**state, "stage": "shares_open", "seed_shares": seed_shares,
            "key_shares": key_shares, "mask_partners": partners, "model": received}


def pairwise_mask(private: bytes, peer_public: bytes, *, context: str, length: int) -> np.ndarray:
    seed = agree(private, peer_public, purpose="mask", context=context)
    return expand_mask(seed, length)


def mask(state: State, encoded: np.ndarray) -> tuple[State, np.ndarray]:
    """y_i: the encoded update plus the self mask and the signed pairwise masks."""
    _expect(state, "shares_open")
    me, length = state["index"], encoded.size
    masked = ring_add(encoded, expand_mask(state["self_seed"], length))
    for j in state["mask_partners"]:
        pair = pairwise_mask(state["mask_private"], state["mask_keys"][j],
                             context=state["context"], length=length)
        masked = ring_add(masked, pair) if j > me else ring_subtract(masked, pair)
    return {**state, "stage": "masked"}, masked


def consistency(state: State, request: ConsistencyRequest,
                signer: Signer) -> tuple[State, ConsistencyReply]:
    """Sign the one survivor set this site is shown, with the model it received."""
    _expect(state, "masked")
    survivors = sorted(set(request.survivors))
    if state["index"] not in survivors or not set(survivors) <= set(state["signers"]):
        raise SecAggError("secagg-inconsistent", "the survivor set leaves out this site or "
                          "names sites that never advertised; refused")
    signature = signer.sign(VIEW, view_fields(state["context"], survivors, _seen(state)))
    return ({**state, "stage": "signed", "view": survivors},
            ConsistencyReply(signature=signature))


def _seen(state: State) -> str:
    """What else a site's signature on the survivor set covers: the round's parameters (n, t,
    degree, encoding), the global model and configuration it received, and the set of
    advertisements its graph came from."""
    return f"{state['params']}/{state['model']}/{state['adverts_digest']}"


def _parameters_digest(request: SetupRequest) -> str:
    return hashlib.sha256(pack(*(str(v).encode() for v in (
        request.context, request.clients, request.threshold, request.degree,
        float(request.clip_range).hex(), request.max_weight)))).hexdigest()


def unmask(state: State, request: UnmaskRequest) -> tuple[State, UnmaskReply]:
    _expect(state, "signed")
    view = state["view"]
    if sorted(set(request.survivors)) != view:
        raise SecAggError("secagg-inconsistent", "asked to unmask for another survivor set "
                          "than the one this site signed; refused")
    fields = view_fields(state["context"], view, _seen(state))
    unsigned = [j for j in view if j not in request.signatures]
    if unsigned or set(request.signatures) - set(view):
        raise SecAggError("secagg-inconsistent", f"survivors {unsigned} did not sign the "
                          "survivor set (every survivor must sign the same set and global "
                          "model); refused")
    for j in view:
        if not verify(state["signers"][j], VIEW, fields, request.signatures[j]):
            raise SecAggError("secagg-inconsistent", f"client {j}'s signature does not cover "
                              "this survivor set and this global model: sites were shown "
                              "different sets or models; refused")
    me, near = state["index"], set(state["neighbours"])
    unmasked = sorted((near & set(view)) - set(state["mask_partners"]))
    if unmasked:
        raise SecAggError("secagg-inconsistent", f"survivors {unmasked} never sent this site "
                          "their shares, so it did not mask with them; refused")
    active = sorted((near | {me}) & set(view))
    dropped = sorted(set(state["mask_partners"]) - set(view))
    if len(active) < state["threshold"]:
        raise SecAggError("secagg-too-few", f"only {len(active)} survivors in this "
                          f"neighbourhood < threshold {state['threshold']}; refused")
    reply = UnmaskReply(self_mask_shares={j: state["seed_shares"][j] for j in active},
                        key_shares={j: state["key_shares"][j] for j in dropped})
    return {"stage": "done", "context": state["context"]}, reply


def dump_state(state: State) -> bytes:
    """The state as JSON bytes (bytes as hex, int-keyed dicts as pairs) for the node's store."""
    return json.dumps(_plain(state), sort_keys=True).encode()


def load_state(data: bytes) -> State:
    return _restore(json.loads(data.decode()))


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b": value.hex()}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _plain(v) for k, v in value.items()}
        return {"$d": [[k, _plain(v)] for k, v in sorted(value.items())]}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _restore(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$b"}:
            return bytes.fromhex(value["$b"])
        if set(value) == {"$d"}:
            return {k: _restore(v) for k, v in value["$d"]}
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value
