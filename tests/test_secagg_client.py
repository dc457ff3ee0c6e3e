"""The client's state machine refuses every step that could leak its update."""

import numpy as np
import pytest

from common.secagg import client
from common.secagg.identity import Roster, Signer
from common.secagg.messages import (
    ConsistencyRequest,
    MaskedInputRequest,
    SetupRequest,
    ShareKeysRequest,
    UnmaskRequest,
)
from tests.secagg_run import MODEL, after_masks, after_shares, identities, run_round


def request(**overrides) -> SetupRequest:
    values = {"context": "r/1", "index": 0, "clients": 3, "threshold": 2, "degree": 2,
              "clip_range": 1.0, "max_weight": 10}
    return SetupRequest(**{**values, **overrides})


@pytest.mark.parametrize("overrides", [{"clients": 1, "degree": 1}, {"threshold": 1}])
def test_a_sum_of_one_is_refused(overrides) -> None:
    with pytest.raises(client.SecAggError, match="at least 2") as error:
        client.setup(request(**overrides), Signer.generate())
    assert error.value.code == "secagg-unsafe"


def test_stages_out_of_order_are_refused() -> None:
    state, _ = client.setup(request(), Signer.generate())
    with pytest.raises(client.SecAggError, match="out of order"):
        client.mask(state, np.zeros(3, dtype=np.uint32))
    with pytest.raises(client.SecAggError, match="out of order"):
        client.open_shares({}, MaskedInputRequest(ciphertexts={}), MODEL)
    with pytest.raises(client.SecAggError, match="out of order"):
        client.unmask(state, UnmaskRequest(survivors=[0, 1], signatures={}))


def test_a_tampered_share_is_rejected_naming_its_sender() -> None:
    def flip(i: int, req: MaskedInputRequest) -> MaskedInputRequest:
        if i != 1:
            return req
        sealed = req.ciphertexts[2]
        return MaskedInputRequest({**req.ciphertexts, 2: sealed[:-1] + bytes([sealed[-1] ^ 1])})

    rng = np.random.default_rng(0)
    with pytest.raises(client.SecAggError, match="client 2 failed authentication") as error:
        run_round([rng.normal(size=5) for _ in range(3)], [1, 1, 1], tamper=flip)
    assert error.value.code == "secagg-bad-share"


def test_a_share_redirected_to_another_client_is_rejected() -> None:
    stepped = after_shares()
    requests = stepped.server.masked_input_requests()
    misrouted = MaskedInputRequest({2: requests[0].ciphertexts[2],
                                    1: requests[1].ciphertexts[2]})
    with pytest.raises(client.SecAggError, match="client 1 failed authentication"):
        client.open_shares(stepped.states[0], misrouted, MODEL)


def test_an_advert_signed_by_a_key_outside_the_roster_is_refused() -> None:
    signers, guards = identities(3)
    stranger = Signer.generate()
    states, adverts = {}, {}
    from common.secagg.server import SecAggServer, Settings

    server = SecAggServer(context="r/1", settings=Settings(clients=3))
    replies = {}
    for i, req in server.setup_requests().items():
        states[i], replies[i] = client.setup(req, stranger if i == 2 else signers[i])
    server.receive_setup(replies)
    adverts = server.share_keys_requests()[0]
    with pytest.raises(client.SecAggError, match="not in this site's roster") as error:
        client.share_keys(states[0], adverts, guards)
    assert error.value.code == "secagg-unknown-peer"


def test_a_forged_or_reused_advert_is_refused() -> None:
    stepped = after_shares()
    server = stepped.server
    honest = server.share_keys_requests()[0].adverts
    fresh, _ = client.setup(request(), stepped.signers[0])
    # site 1's signed advert replayed as site 2's
    with pytest.raises(client.SecAggError, match="another index"):
        client.share_keys(fresh, ShareKeysRequest(adverts={**honest, 2: honest[1]}),
                          stepped.guards)
    # site 1's keys swapped under its signature
    from common.secagg.messages import Advert

    one = Advert.from_bytes(honest[1])
    forged = Advert(1, one.mask_key, one.encryption_key, one.signer, one.signature)
    with pytest.raises(client.SecAggError, match="not signed by its key"):
        client.share_keys(fresh, ShareKeysRequest(adverts={**honest, 1: forged.to_bytes()}),
                          stepped.guards)


def _share_keys_at(clients: int, colluding: int, threshold: int):
    from common.secagg.server import SecAggServer, Settings

    signers, guards = identities(clients, colluding)
    server = SecAggServer(context="r/1", settings=Settings(clients=clients))
    states, replies = {}, {}
    for i, req in server.setup_requests().items():
        req = SetupRequest(**{**req.__dict__, "threshold": threshold})
        states[i], replies[i] = client.setup(req, signers[i])
    server.receive_setup(replies)
    return client.share_keys(states[0], server.share_keys_requests()[0], guards)


@pytest.mark.parametrize(("clients", "colluding", "least"),
                         [(4, 0, 3), (6, 0, 4), (3, 1, 3), (10, 2, 7)])
def test_a_threshold_below_the_sites_bound_is_refused(clients, colluding, least) -> None:
    assert client.minimum_threshold(clients, colluding) == least
    with pytest.raises(client.SecAggError, match="outside") as error:
        _share_keys_at(clients, colluding, least - 1)
    assert error.value.code == "secagg-unsafe"
    _share_keys_at(clients, colluding, least)  # the bound itself is accepted


def test_unmasking_needs_the_signed_set_and_every_survivors_signature_on_it() -> None:
    stepped = after_masks()
    signatures = {}
    for i, req in stepped.server.consistency_requests().items():
        stepped.states[i], reply = client.consistency(stepped.states[i], req,
                                                      stepped.signers[i])
        signatures[i] = reply.signature
    state = stepped.states[0]
    with pytest.raises(client.SecAggError, match="another survivor set"):
        client.unmask(state, UnmaskRequest(survivors=[0, 1], signatures=signatures))
    with pytest.raises(client.SecAggError, match=r"survivors \[1, 2\] did not sign"):
        client.unmask(state, UnmaskRequest(survivors=[0, 1, 2], signatures={0: signatures[0]}))
    forged = {**signatures, 1: signatures[2]}
    with pytest.raises(client.SecAggError, match="client 1's signature"):
        client.unmask(state, UnmaskRequest(survivors=[0, 1, 2], signatures=forged))
    done, reply = client.unmask(state, UnmaskRequest(survivors=[0, 1, 2],
                                                     signatures=signatures))
    assert sorted(reply.self_mask_shares) == [0, 1, 2] and reply.key_shares == {}
    with pytest.raises(client.SecAggError, match="out of order"):
        client.unmask(done, UnmaskRequest(survivors=[0, 1, 2], signatures=signatures))


def test_a_site_left_out_of_the_survivors_it_is_shown_refuses_to_sign() -> None:
    stepped = after_masks()
    with pytest.raises(client.SecAggError, match="leaves out this site"):
        client.consistency(stepped.states[0], ConsistencyRequest(survivors=[1, 2]),
                           stepped.signers[0])
    with pytest.raises(client.SecAggError, match="never advertised"):
        client.consistency(stepped.states[0], ConsistencyRequest(survivors=[0, 1, 7]),
                           stepped.signers[0])


def test_a_site_whose_own_key_is_not_in_its_roster_folder_still_signs_for_itself() -> None:
    signers, _ = identities(3)
    guards = client.Guards(roster=Roster.of(s.public for s in signers[1:]))
    assert signers[0].public not in guards.roster
    assert signers[0].public in guards.with_own(signers[0].public).roster


def test_state_survives_its_stored_form() -> None:
    stepped = after_shares()
    restored = client.load_state(client.dump_state(stepped.states[1]))
    assert restored == stepped.states[1]
    assert isinstance(restored["seed_shares"], dict) and 1 in restored["seed_shares"]


def test_one_key_cannot_pose_as_two_participants_by_its_comment() -> None:
    from common.secagg.messages import Advert

    stepped = after_shares()
    honest = stepped.server.share_keys_requests()[0].adverts
    fresh, _ = client.setup(request(), stepped.signers[0])
    one = Advert.from_bytes(honest[1])
    commented = Advert(1, one.encryption_key, one.mask_key, one.signer + b" sybil",
                       one.signature)
    with pytest.raises(client.SecAggError, match="canonical form"):
        client.share_keys(fresh, ShareKeysRequest(adverts={**honest, 1: commented.to_bytes()}),
                          stepped.guards)


def test_an_index_written_another_way_is_refused() -> None:
    from common.secagg.messages import Advert, pack, unpack

    advert = Advert(5, b"e" * 32, b"m" * 32, b"k", b"s").to_bytes()
    _, *rest = unpack(advert, 5)
    for spelling in (b"05", b" 5", b"+5", b"5.0"):
        with pytest.raises(ValueError, match="plain decimal"):
            Advert.from_bytes(pack(spelling, *rest))


def test_the_graph_seed_ignores_signatures_anyone_can_re_encode() -> None:
    from common.secagg.graph import graph_seed
    from common.secagg.messages import Advert

    adverts = [Advert(i, bytes([i]) * 32, bytes([i + 1]) * 32, b"key", b"sig") for i in range(12)]
    resigned = [Advert(a.index, a.encryption_key, a.mask_key, a.signer, b"other") for a in adverts]
    assert graph_seed("r", [a.identity() for a in adverts]) == graph_seed(
        "r", [a.identity() for a in resigned])


@pytest.mark.parametrize("overrides", [{"clients": 12, "degree": 2}, {"clip_range": 0.0},
                                       {"clip_range": float("nan")}, {"max_weight": 0}])
def test_setups_that_weaken_the_round_are_refused(overrides) -> None:
    with pytest.raises(client.SecAggError) as error:
        client.setup(request(**overrides), Signer.generate())
    assert error.value.code in {"secagg-unsafe", "secagg-bad-setup"}


def test_a_survivor_that_sent_this_site_no_shares_is_refused_at_unmasking() -> None:
    stepped = after_shares()
    requests = stepped.server.masked_input_requests()
    withheld = MaskedInputRequest({1: requests[0].ciphertexts[1]})  # 2's share kept back
    stepped.states[0] = client.open_shares(stepped.states[0], withheld, MODEL)
    stepped.states[0], _ = client.mask(stepped.states[0], np.zeros(4, dtype=np.uint32))
    state, reply = client.consistency(stepped.states[0], ConsistencyRequest(survivors=[0, 1, 2]),
                                      stepped.signers[0])
    signatures = {0: reply.signature}
    for i in (1, 2):
        s = client.open_shares(stepped.states[i], requests[i], MODEL)
        s, _ = client.mask(s, np.zeros(4, dtype=np.uint32))
        _, answer = client.consistency(s, ConsistencyRequest(survivors=[0, 1, 2]),
                                       stepped.signers[i])
        signatures[i] = answer.signature
    with pytest.raises(client.SecAggError, match=r"survivors \[2\] never sent this site"):
        client.unmask(state, UnmaskRequest(survivors=[0, 1, 2], signatures=signatures))
