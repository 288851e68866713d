"""Reading parsed JSON back into the schema's types, checking every value against its annotation.

Dataclasses and TypedDicts must have exactly their keys (an omitted ``OMIT_IF_NONE`` field, or a
``NotRequired`` key, may be absent); lists, ``dict[str, X]`` and unions are followed down; plain
values must be of the annotated type (a float field takes an int, as in Python; no number takes a
bool); null only where the annotation admits None. :data:`JsonObject` and :data:`JsonValue` fields
(the environment, a comparison row) are opaque: any object, any value. An error names the path of the
value, e.g. ``document.kl_divergence.per_prompt[3].kl_mean: expected float, got str``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")
# The JSON aliases are recursive strings, which typing.get_type_hints cannot evaluate: the reader
# sees them as what they are at run time (an object, or any value).
_HINT_NAMES = {"JsonObject": dict, "JsonValue": object}
# A float field accepts an int (JSON writes 2.0 as 2.0, but the code may hold an int where a float
# is annotated); bool is an int subclass in Python but never a number in the schema.
_PLAIN = {str: (str,), int: (int,), float: (int, float), bool: (bool,)}


class SchemaError(ValueError):
    """A JSON value that does not have the shape of the schema type it is read as; ``where`` is its path."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where


def from_json_object(cls: type[D], data: object, where: str = "document") -> D:
    """Read a JSON object back into the dataclass ``cls``, checking every value (module docstring)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    optional = {name for name, f in fields.items() if f.metadata.get("omit_if_none")}
    values = _read_keys(cls, data, set(fields) - optional, where)
    return cls(**values)


def _read_keys(cls: type, data: object, required: set[str], where: str) -> dict[str, object]:
    """The values of ``data`` read against ``cls``'s annotations: every required key present, no
    unknown one."""
    if not isinstance(data, dict):
        raise SchemaError(where, f"expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, localns=_HINT_NAMES)
    unknown = set(data) - set(hints)
    if unknown:
        raise SchemaError(where, f"unknown keys {sorted(unknown)} for {cls.__name__}")
    missing = [name for name in hints if name in required and name not in data]
    if missing:
        raise SchemaError(where, f"missing key {missing[0]!r} of {cls.__name__}")
    return {name: _read(hints[name], data[name], f"{where}.{name}") for name in hints if name in data}


def _read(hint: object, value: object, where: str) -> object:
    """``value`` checked against ``hint``; dataclasses built, everything else returned as plain JSON."""
    if hint is object:  # JsonValue: any value
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _read_union(args, value, where)
    if value is None:
        raise SchemaError(where, f"null where {_name(hint)} is expected")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json_object(hint, value, where)
    if typing.is_typeddict(hint):
        return _read_keys(typing.cast(type, hint), value, set(hint.__required_keys__), where)  # type: ignore[attr-defined]
    if origin is list or hint is list:
        return _read_list(args[0] if args else object, value, where)
    if origin is dict or hint is dict:
        return _read_dict(args[1] if args else object, value, where)
    if origin is typing.Literal:
        if value not in args:
            raise SchemaError(where, f"expected one of {list(args)}, got {value!r}")
        return value
    if hint in _PLAIN:
        if isinstance(value, _PLAIN[hint]) and (hint is bool or not isinstance(value, bool)):
            return value
        raise SchemaError(where, f"expected {_name(hint)}, got {type(value).__name__}")
    raise TypeError(f"{where}: the schema reader has no rule for the annotation {hint!r}")


def _read_union(alternatives: tuple[object, ...], value: object, where: str) -> object:
    """The first alternative ``value`` reads as. When none does, the error that got deepest into the
    value (an alternative whose keys fit but a field of which is wrong) says most."""
    if value is None and type(None) in alternatives:
        return None
    errors: list[SchemaError] = []
    for hint in (a for a in alternatives if a is not type(None)):
        try:
            return _read(hint, value, where)
        except SchemaError as exc:
            errors.append(exc)
    deepest = max(errors, key=lambda e: len(e.where))
    if deepest.where != where or len(errors) == 1:
        raise deepest
    names = " | ".join(_name(a) for a in alternatives)
    raise SchemaError(where, f"expected {names}, got {type(value).__name__}")


def _read_list(item: object, value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise SchemaError(where, f"expected a list, got {type(value).__name__}")
    return [_read(item, v, f"{where}[{i}]") for i, v in enumerate(value)]


def _read_dict(item: object, value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise SchemaError(where, f"expected an object, got {type(value).__name__}")
    return {k: _read(item, v, f"{where}.{k}") for k, v in value.items()}


def _name(hint: object) -> str:
    return "null" if hint is type(None) else getattr(hint, "__name__", None) or str(hint)
