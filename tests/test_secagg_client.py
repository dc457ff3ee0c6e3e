"""The client's state machine refuses every step that could leak its update."""

import numpy as np
import pytest

from common.secagg import client
from common.secagg.messages import MaskedInputRequest, SetupRequest, UnmaskRequest
from common.secagg.server import SecAggServer, Settings
from tests.secagg_run import run_round


def request(**overrides) -> SetupRequest:
    values = {"context": "r/1", "index": 0, "clients": 3, "neighbours": [1, 2], "threshold": 2,
              "clip_range": 1.0, "max_weight": 10}
    return SetupRequest(**{**values, **overrides})


def three_clients_after_shares():
    server = SecAggServer(context="r/1", settings=Settings(clients=3))
    states, replies = {}, {}
    for i, req in server.setup_requests().items():
        states[i], replies[i] = client.setup(req)
    server.receive_setup(replies)
    replies = {}
    for i, req in server.share_keys_requests().items():
        states[i], replies[i] = client.share_keys(states[i], req)
    server.receive_share_keys(replies)
    return server, states


@pytest.mark.parametrize("overrides", [{"clients": 1, "neighbours": []}, {"threshold": 1}])
def test_a_sum_of_one_is_refused(overrides) -> None:
    with pytest.raises(client.SecAggError, match="at least 2") as error:
        client.setup(request(**overrides))
    assert error.value.code == "secagg-unsafe"


def test_stages_out_of_order_are_refused() -> None:
    state, _ = client.setup(request())
    with pytest.raises(client.SecAggError, match="out of order"):
        client.mask(state, np.zeros(3, dtype=np.uint32))
    with pytest.raises(client.SecAggError, match="out of order"):
        client.open_shares({}, MaskedInputRequest(ciphertexts={}))


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
    server, states = three_clients_after_shares()
    requests = server.masked_input_requests()
    misrouted = MaskedInputRequest({2: requests[0].ciphertexts[2], 1: requests[1].ciphertexts[2]})
    with pytest.raises(client.SecAggError, match="client 1 failed authentication"):
        client.open_shares(states[0], misrouted)


def test_unmasking_refuses_both_shares_of_one_client_and_a_second_request() -> None:
    server, states = three_clients_after_shares()
    for i, req in server.masked_input_requests().items():
        states[i] = client.open_shares(states[i], req)
        states[i], _ = client.mask(states[i], np.zeros(4, dtype=np.uint32))
    with pytest.raises(client.SecAggError, match="both shares"):
        client.unmask(states[0], UnmaskRequest(active=[0, 1], dropped=[1]))
    with pytest.raises(client.SecAggError, match="threshold"):
        client.unmask(states[0], UnmaskRequest(active=[0], dropped=[1, 2]))
    done, _ = client.unmask(states[0], UnmaskRequest(active=[0, 1, 2], dropped=[]))
    with pytest.raises(client.SecAggError, match="out of order"):
        client.unmask(done, UnmaskRequest(active=[0, 1], dropped=[2]))


def test_state_survives_its_stored_form() -> None:
    _, states = three_clients_after_shares()
    restored = client.load_state(client.dump_state(states[1]))
    assert restored == states[1]
    assert isinstance(restored["seed_shares"], dict) and 1 in restored["seed_shares"]
