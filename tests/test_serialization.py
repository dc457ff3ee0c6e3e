import numpy as np
import pytest

from common.config import DataConfig, ModelConfig
from common.models import build_model
from common.serialization import (
    all_finite,
    check_compatible,
    digest,
    from_record,
    load_weights,
    model_weights,
    to_record,
)


def test_record_round_trip_keeps_names_shapes_and_bytes() -> None:
    weights = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
               "b": np.array([1.5], np.float32)}
    back = from_record(to_record(weights))
    assert set(back) == set(weights)
    for name in weights:
        assert np.array_equal(back[name], weights[name]) and back[name].dtype == np.float32
    assert digest(back) == digest(weights)
    assert digest({**weights, "b": np.array([1.6], np.float32)}) != digest(weights)


def test_model_weights_load_back_and_shape_errors_name_the_array() -> None:
    model = build_model(data=DataConfig(), model=ModelConfig(text_encoder="gru"), seed=0)
    weights = model_weights(model)
    other = build_model(data=DataConfig(), model=ModelConfig(text_encoder="gru"), seed=1)
    load_weights(other, weights)
    assert digest(model_weights(other)) == digest(weights)
    name = next(iter(weights))
    with pytest.raises(ValueError, match=f"'{name}' has shape"):
        check_compatible(weights, {**weights, name: np.zeros((1, 1), np.float32)}, what="x")
    with pytest.raises(ValueError, match="missing"):
        check_compatible(weights, {}, what="x")


def test_all_finite() -> None:
    assert all_finite({"a": np.zeros(3)})
    assert not all_finite({"a": np.array([0.0, np.nan])})


def test_flatten_and_unflatten_round_trip_in_name_order() -> None:
    from common.serialization import flatten, unflatten

    weights = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([7.0], np.float32)}
    vector = flatten(weights)
    assert vector.tolist() == [7.0, 0, 1, 2, 3, 4, 5]
    back = unflatten(vector, weights)
    assert all(np.array_equal(back[k], weights[k]) and back[k].dtype == np.float32
               for k in weights)
    with pytest.raises(ValueError, match="6 elements, the model 7"):
        unflatten(vector[:6], weights)


def test_weights_travel_packed_in_two_arrays_and_come_back_exactly() -> None:
    from common.serialization import LAYOUT, PACKED, from_record, to_record

    weights = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
               "b": np.array([1.5], np.float64), "empty": np.zeros((0, 4), np.float32)}
    record = to_record(weights)
    assert set(record) == {PACKED, LAYOUT}
    back = from_record(record)
    assert list(back) == list(weights)
    assert all(back[k].dtype == v.dtype and np.array_equal(back[k], v)
               for k, v in weights.items())
    assert from_record(to_record({})) == {}


def test_a_hostile_packed_record_is_a_record_error() -> None:
    import json

    from flwr.app import Array, ArrayRecord

    from common.records import RecordError
    from common.serialization import LAYOUT, PACKED, from_record

    def packed(layout, blob: bytes) -> ArrayRecord:
        record = ArrayRecord()
        record[LAYOUT] = Array.from_numpy_ndarray(
            np.frombuffer(json.dumps(layout).encode(), np.uint8).copy())
        record[PACKED] = Array.from_numpy_ndarray(np.frombuffer(blob, np.uint8).copy())
        return record

    cases = [
        ([["w", "float32", [2**30, 2**30, 2**30]]], b"\0" * 8),  # declares far more than sent
        ([["w", "float32", [1]], ["w", "float32", [1]]], b"\0" * 8),  # a name twice
        ([["w", "object", [1]]], b"\0" * 8),  # not a numeric dtype
        ([["w", "float32", [-1]]], b"\0" * 4),
        ([["w", "float32", [1]]], b"\0" * 8),  # bytes left over
        ({"w": 1}, b""),
    ]
    for layout, blob in cases:
        with pytest.raises(RecordError):
            from_record(packed(layout, blob))
    deep = ArrayRecord()  # a layout nested past the parser's recursion limit
    deep[LAYOUT] = Array.from_numpy_ndarray(
        np.frombuffer(b"[" * 100_000 + b"]" * 100_000, np.uint8).copy())
    deep[PACKED] = Array.from_numpy_ndarray(np.zeros(0, np.uint8))
    with pytest.raises(RecordError, match="unreadable layout"):
        from_record(deep)
    record = packed([["w", "float32", [1]]], b"\0" * 4)
    record["extra"] = Array.from_numpy_ndarray(np.zeros(1, np.float32))
    with pytest.raises(RecordError, match="exactly"):
        from_record(record)


def test_one_array_per_tensor_is_read_only_when_numeric() -> None:
    from flwr.app import Array, ArrayRecord

    from common.records import RecordError

    good = ArrayRecord()
    good["w"] = Array.from_numpy_ndarray(np.ones(2, np.float32))
    assert np.array_equal(from_record(good)["w"], np.ones(2, np.float32))
    for bad in (np.array(["1", "2"]), np.array([1 + 2j, 3j]),
                np.array(["2026-01-01"], dtype="datetime64[D]")):
        record = ArrayRecord()
        record["w"] = Array.from_numpy_ndarray(bad)
        with pytest.raises(RecordError, match="dtype"):
            from_record(record)


def test_a_packed_record_too_big_to_reshape_or_with_bad_names_is_a_record_error() -> None:
    import json

    from flwr.app import Array, ArrayRecord

    from common.records import RecordError
    from common.serialization import LAYOUT, MAX_LAYOUT_BYTES, PACKED

    def packed(layout_bytes: np.ndarray) -> ArrayRecord:
        record = ArrayRecord()
        record[LAYOUT] = Array.from_numpy_ndarray(layout_bytes)
        record[PACKED] = Array.from_numpy_ndarray(np.zeros(0, np.uint8))
        return record

    def text(layout) -> np.ndarray:
        return np.frombuffer(json.dumps(layout).encode(), np.uint8).copy()

    for layout_bytes in (text([["w", "float32", [0] + [2**31 - 1] * 7]]),  # too big
                         text([["\ud800", "float32", [0]]]),  # not valid text
                         text([["w", "float32", [0]]]).astype(np.float64),  # not bytes
                         np.zeros(MAX_LAYOUT_BYTES + 1, np.uint8)):
        with pytest.raises(RecordError):
            from_record(packed(layout_bytes))
