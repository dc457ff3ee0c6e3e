"""Typed messages as Flower records: every field type survives, and a wrong one is named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from common.records import RecordError, from_records, read_optional, to_records


@dataclass(frozen=True)
class Example:
    RECORD: ClassVar[str] = "example"
    count: int
    ratio: float
    name: str
    flag: bool
    blob: bytes
    ids: list[int]
    shares: dict[int, bytes]
    vector: np.ndarray
    history: list[list[float]]
    labels: dict[int, int] = field(default_factory=dict)
    optional: float | None = None


def example() -> Example:
    return Example(count=3, ratio=0.5, name="a", flag=True, blob=b"\x00\x01", ids=[1, 2],
                   shares={0: b"x", 7: b"y"}, vector=np.arange(4, dtype=np.uint32),
                   history=[[1.2, 0.1, 10.0]], labels={0: 5, 3: 1})


def test_every_field_type_survives_the_record_form() -> None:
    back = from_records(Example, RecordDict(to_records(example())))
    original = example()
    assert np.array_equal(back.vector, original.vector) and back.vector.dtype == np.uint32
    assert {k: v for k, v in back.__dict__.items() if k != "vector"} == \
        {k: v for k, v in original.__dict__.items() if k != "vector"}
    assert back.optional is None


def test_a_field_of_the_wrong_type_is_named() -> None:
    records = to_records(example())
    records["example"] = ConfigRecord({**records["example"], "count": "three"})
    with pytest.raises(RecordError, match="'count': expected int"):
        from_records(Example, RecordDict(records))


def test_a_missing_required_field_or_record_is_an_error() -> None:
    records = to_records(example())
    del records["example.vector"]
    with pytest.raises(RecordError, match="'vector' missing"):
        from_records(Example, RecordDict(records))
    with pytest.raises(RecordError, match="record 'example' missing"):
        from_records(Example, RecordDict({}))
    assert read_optional(Example, RecordDict({})) is None


def test_nested_fields_are_validated_too() -> None:
    records = to_records(example())
    records["example"] = ConfigRecord({**records["example"], "history": '[["x"]]'})
    with pytest.raises(RecordError, match="'history'"):
        from_records(Example, RecordDict(records))
