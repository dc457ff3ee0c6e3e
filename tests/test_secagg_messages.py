import numpy as np
from flwr.app import RecordDict

from common.records import from_records, to_records
from common.secagg import messages


def roundtrip(message):
    return from_records(type(message), RecordDict(to_records(message)))


def test_every_stage_message_survives_the_record_form() -> None:
    examples = [
        messages.SetupRequest(context="r/1", index=2, clients=5, neighbours=[0, 1, 3, 4],
                              threshold=3, clip_range=8.0, max_weight=100),
        messages.SetupReply(encryption_key=b"a" * 32, mask_key=b"b" * 32),
        messages.ShareKeysRequest(encryption_keys={0: b"x" * 32}, mask_keys={0: b"y" * 32}),
        messages.ShareKeysReply(ciphertexts={1: b"c", 3: b"d"}),
        messages.MaskedInputRequest(ciphertexts={}),
        messages.UnmaskRequest(active=[0, 2], dropped=[1]),
        messages.UnmaskReply(self_mask_shares={0: b"s"}, key_shares={1: b"k"}),
    ]
    for message in examples:
        assert roundtrip(message) == message


def test_masked_vector_travels_as_uint32_array() -> None:
    vector = np.arange(10, dtype=np.uint32) * 400_000_000
    back = roundtrip(messages.MaskedInputReply(vector=vector))
    assert back.vector.dtype == np.uint32 and np.array_equal(back.vector, vector)
