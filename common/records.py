"""Plain dataclasses as Flower records: the one conversion every message of fedmm uses.

A message is a frozen dataclass whose class attribute ``RECORD`` names it on the wire. Its fields
travel as:

- ``int``, ``float``, ``str``, ``bool``, ``bytes`` and lists of them: in one ``ConfigRecord``
  named ``RECORD``, under the field's name;
- ``dict[int, bytes]``: a ``ConfigRecord`` of its own, ``RECORD.field``;
- ``numpy.ndarray``: an ``ArrayRecord`` of its own, ``RECORD.field``;
- anything else (nested lists, other dicts): JSON in the ``RECORD`` record.

A field that is ``None`` is left out and comes back as its default. Reading checks every field
against its declared type, so a message a peer got wrong (or forged) fails as a
:class:`RecordError` naming the field, never as a half-read object.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar, get_args, get_origin

import numpy as np

T = TypeVar("T")
_SCALARS = (int, float, str, bool, bytes)


class RecordError(ValueError):
    """A record is missing, or one of its fields has the wrong type."""


@cache
def _field_types(kind: type) -> dict[str, Any]:
    hints = typing.get_type_hints(kind)
    return {item.name: hints[item.name] for item in dataclasses.fields(kind)}


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(annotation, False)``."""
    if get_origin(annotation) in (types.UnionType, typing.Union):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if len(options) == 1 and len(get_args(annotation)) == 2:
            return options[0], True
    return annotation, False


def _kind_of(annotation: Any) -> str:
    """How a field of this type travels: scalar, list, bytes-map, array or json."""
    if annotation is np.ndarray:
        return "array"
    if annotation in _SCALARS:
        return "scalar"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and len(args) == 1 and args[0] in _SCALARS:
        return "list"
    if origin is dict and args == (int, bytes):
        return "bytes-map"
    return "json"


def record_name(kind: type) -> str:
    return str(kind.RECORD)  # type: ignore[attr-defined]


def to_records(message: Any) -> dict[str, Any]:
    """Flower records (items of a ``RecordDict``) carrying ``message``."""
    from flwr.app import Array, ArrayRecord, ConfigRecord

    name = record_name(type(message))
    records: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for field_name, annotation in _field_types(type(message)).items():
        value = getattr(message, field_name)
        if value is None:
            continue
        kind = _kind_of(_optional(annotation)[0])
        if kind == "array":
            records[f"{name}.{field_name}"] = ArrayRecord({"v": Array(np.asarray(value))})
        elif kind == "bytes-map":
            records[f"{name}.{field_name}"] = ConfigRecord(
                {str(k): bytes(v) for k, v in value.items()})
        elif kind == "list":
            scalars[field_name] = list(value)
        elif kind == "json":
            scalars[field_name] = json.dumps(value, sort_keys=True)
        else:
            scalars[field_name] = value
    records[name] = ConfigRecord(scalars)
    return records


def _check_scalar(value: Any, expected: type, where: str) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        raise RecordError(f"{where}: expected int, got bool")
    if expected is bytes and isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, expected):
        raise RecordError(f"{where}: expected {expected.__name__}, got {type(value).__name__}")
    return value


def _read_field(content: Mapping[str, Any], scalars: Mapping[str, Any], name: str,
                field_name: str, annotation: Any) -> Any:
    """The field's value, or ``dataclasses.MISSING`` when it is absent."""
    where = f"record '{name}', field '{field_name}'"
    kind = _kind_of(annotation)
    if kind in ("array", "bytes-map"):
        key = f"{name}.{field_name}"
        if key not in content:
            return dataclasses.MISSING
        try:
            if kind == "array":
                return content[key]["v"].numpy()
            return {int(k): _check_scalar(v, bytes, where) for k, v in content[key].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise RecordError(f"{where}: {error}") from None
    if field_name not in scalars:
        return dataclasses.MISSING
    value = scalars[field_name]
    if kind == "scalar":
        return _check_scalar(value, annotation, where)
    if kind == "list":
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list")
        return [_check_scalar(v, get_args(annotation)[0], where) for v in value]
    try:
        from pydantic import TypeAdapter, ValidationError

        return TypeAdapter(annotation).validate_python(json.loads(_check_scalar(value, str,
                                                                                where)))
    except (ValueError, ValidationError) as error:
        raise RecordError(f"{where}: {error}") from None


def from_records(kind: type[T], content: Mapping[str, Any]) -> T:
    """The ``kind`` message from a ``RecordDict`` (or a plain mapping of records)."""
    name = record_name(kind)
    if name not in content:
        raise RecordError(f"record '{name}' missing")
    scalars = content[name]
    values: dict[str, Any] = {}
    for item in dataclasses.fields(kind):  # type: ignore[arg-type]
        annotation, optional = _optional(_field_types(kind)[item.name])
        value = _read_field(content, scalars, name, item.name, annotation)
        if value is dataclasses.MISSING:
            has_default = (item.default is not dataclasses.MISSING
                           or item.default_factory is not dataclasses.MISSING)
            if has_default:
                continue
            if not optional:
                raise RecordError(f"record '{name}', field '{item.name}' missing")
            value = None
        values[item.name] = value
    return kind(**values)


def has_record(kind: type, content: Mapping[str, Any]) -> bool:
    return record_name(kind) in content


def read_optional(kind: type[T], content: Mapping[str, Any]) -> T | None:
    """The ``kind`` message, or ``None`` when ``content`` does not carry one."""
    return from_records(kind, content) if has_record(kind, content) else None
