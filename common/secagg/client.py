"""The client's side of SecAgg+ as a state machine over plain data (no Flower, no torch).

Stage by stage, for client i with neighbourhood N(i) (its neighbours) in round ``context``:

1. ``setup``: two fresh X25519 key pairs, (c_sk, c_pk) to seal shares and (s_sk, s_pk) for
   pairwise masks.
2. ``share_keys``: a fresh 256-bit self-mask seed b_i; t-of-(|N(i)|+1) Shamir shares of b_i and
   of s_sk_i for every holder j ∈ N(i) ∪ {i}; each neighbour's pair sealed with AES-GCM under
   HKDF(X25519(c_sk_i, c_pk_j)).
3. ``open_shares`` then ``mask``: the received shares are authenticated (a tampered or misrouted
   one aborts the round for this client); the encoded update x_i is sent as

       y_i = x_i + PRG(b_i) + Σ_{j ∈ N(i) ∩ U2} sign(j − i) · PRG(HKDF(X25519(s_sk_i, s_pk_j))),

   so that pairwise masks cancel in the sum over survivors.
4. ``unmask``: for each survivor a share of its b, for each dropped neighbour a share of its
   s_sk, never both for one client and only once per round.

The state is a plain dict (bytes, ints, lists, dicts) that the caller persists between stages.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from common.secagg import shamir
from common.secagg.encoding import ring_add, ring_subtract
from common.secagg.messages import (
    MaskedInputRequest,
    SetupReply,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
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


class SecAggError(RuntimeError):
    """This client refuses to go on with the round; the message says why (one line)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _associated(context: str, sender: int, recipient: int) -> bytes:
    return f"{context}/{sender}->{recipient}".encode()


def _expect(state: State, stage: str) -> None:
    if state.get("stage") != stage:
        raise SecAggError("secagg-out-of-order",
                          f"secure aggregation stage out of order (state: "
                          f"{state.get('stage', 'none')}, expected {stage})")


def setup(request: SetupRequest) -> tuple[State, SetupReply]:
    holders = len(request.neighbours) + 1
    if request.clients < 2 or request.threshold < 2:
        raise SecAggError("secagg-unsafe", "secure aggregation needs at least 2 clients and a "
                          "threshold of at least 2 (a sum of one is the update itself)")
    if request.threshold > holders or request.index in request.neighbours:
        raise SecAggError("secagg-bad-setup", "threshold or neighbour list is inconsistent")
    encryption, masking = generate_key_pair(), generate_key_pair()
    state: State = {
        "stage": "setup", "context": request.context, "index": request.index,
        "neighbours": list(request.neighbours), "threshold": request.threshold,
        "clients": request.clients, "clip_range": request.clip_range,
        "max_weight": request.max_weight,
        "encryption_private": encryption.private, "mask_private": masking.private,
    }
    return state, SetupReply(encryption_key=encryption.public, mask_key=masking.public)


def share_keys(state: State, request: ShareKeysRequest) -> tuple[State, ShareKeysReply]:
    _expect(state, "setup")
    me, neighbours = state["index"], set(state["neighbours"])
    present = sorted(set(request.encryption_keys) & set(request.mask_keys) & neighbours)
    if len(present) + 1 < state["threshold"]:
        raise SecAggError("secagg-too-few", f"only {len(present)} neighbours present; "
                          f"threshold {state['threshold']} cannot be met")
    self_seed = random_seed()
    holders = [*present, me]
    xs = [j + 1 for j in holders]
    seed_shares = shamir.split(self_seed, threshold=state["threshold"], xs=xs)
    key_shares = shamir.split(state["mask_private"], threshold=state["threshold"], xs=xs)
    ciphertexts = {}
    for j in present:
        key = agree(state["encryption_private"], request.encryption_keys[j], purpose="seal",
                    context=state["context"])
        plaintext = _HEADER.pack(me, j) + seed_shares[j + 1] + key_shares[j + 1]
        ciphertexts[j] = seal(key, plaintext, associated=_associated(state["context"], me, j))
    state = {**state, "stage": "share_keys", "self_seed": self_seed,
             "encryption_keys": {j: request.encryption_keys[j] for j in present},
             "mask_keys": {j: request.mask_keys[j] for j in present},
             "seed_shares": {me: seed_shares[me + 1]}, "key_shares": {me: key_shares[me + 1]}}
    return state, ShareKeysReply(ciphertexts=ciphertexts)


def open_shares(state: State, request: MaskedInputRequest) -> State:
    """Authenticate and store the shares the neighbours sealed to this client."""
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
    survivors = sorted(request.ciphertexts)
    if len(survivors) + 1 < state["threshold"]:
        raise SecAggError("secagg-too-few", f"only {len(survivors)} neighbours sent shares; "
                          f"threshold {state['threshold']} cannot be met")
    return {**state, "stage": "shares_open", "seed_shares": seed_shares,
            "key_shares": key_shares, "mask_partners": survivors}


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


def unmask(state: State, request: UnmaskRequest) -> tuple[State, UnmaskReply]:
    _expect(state, "masked")
    active, dropped = set(request.active), set(request.dropped)
    if active & dropped:
        raise SecAggError("secagg-unsafe", "server asked for both shares of one client "
                          f"({sorted(active & dropped)}); refused")
    known = set(state["seed_shares"])
    if not (active | dropped) <= known or state["index"] not in active:
        raise SecAggError("secagg-unsafe", "server named clients this client holds no share of")
    if len(active) < state["threshold"]:
        raise SecAggError("secagg-too-few", f"only {len(active)} survivors in this "
                          f"neighbourhood < threshold {state['threshold']}; refused")
    reply = UnmaskReply(self_mask_shares={j: state["seed_shares"][j] for j in sorted(active)},
                        key_shares={j: state["key_shares"][j] for j in sorted(dropped)})
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
