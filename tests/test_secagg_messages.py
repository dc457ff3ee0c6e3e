import numpy as np
import pytest
from flwr.app import RecordDict

from common.records import from_records, to_records
from common.secagg import messages


def roundtrip(message):
    return from_records(type(message), RecordDict(to_records(message)))


def test_every_stage_message_survives_the_record_form() -> None:
    examples = [
        messages.SetupRequest(context="r/1", index=2, clients=5, threshold=3, degree=4,
                              clip_range=8.0, max_weight=100),
        messages.SetupReply(encryption_key=b"a" * 32, mask_key=b"b" * 32,
                            signer=b"ecdsa-sha2-nistp384 AAAA", signature=b"s" * 100),
        messages.ShareKeysRequest(adverts={0: b"x" * 80, 3: b"y" * 80}),
        messages.ShareKeysReply(ciphertexts={1: b"c", 3: b"d"}),
        messages.MaskedInputRequest(ciphertexts={}),
        messages.ConsistencyRequest(survivors=[0, 2, 3]),
        messages.ConsistencyReply(signature=b"z" * 100),
        messages.UnmaskRequest(survivors=[0, 2], signatures={0: b"p", 2: b"q"}),
        messages.UnmaskReply(self_mask_shares={0: b"s"}, key_shares={1: b"k"}),
    ]
    for message in examples:
        assert roundtrip(message) == message


def test_masked_vector_travels_as_uint32_array() -> None:
    vector = np.arange(10, dtype=np.uint32) * 400_000_000
    back = roundtrip(messages.MaskedInputReply(vector=vector))
    assert back.vector.dtype == np.uint32 and np.array_equal(back.vector, vector)


def test_an_advert_survives_its_byte_form_and_rejects_truncation() -> None:
    advert = messages.Advert(3, b"e" * 32, b"m" * 32, b"ecdsa-sha2-nistp384 AAAA", b"sig")
    data = advert.to_bytes()
    assert messages.Advert.from_bytes(data) == advert
    for broken in (data[:-1], data + b"\0", data[:3]):
        with pytest.raises(ValueError):
            messages.Advert.from_bytes(broken)


def test_signed_fields_cannot_be_shifted_between_fields() -> None:
    assert messages.pack(b"ab", b"c") != messages.pack(b"a", b"bc")
    assert messages.view_fields("r", [0, 12], "m") != messages.view_fields("r", [0, 1, 2], "m")
