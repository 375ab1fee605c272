"""Dataclasses built from plain mappings (YAML, JSON, checkpoints) by their type hints.

:func:`from_mapping` is octasim's one way to turn a nested mapping into a tree of dataclasses: every
key must be a field (an unknown key is an error that names it, with the file it came from and the
known keys), every value must fit the field's type hint (an error names the key, the file and the
expected type in words), and nested dataclasses, lists and ``X | None`` are followed recursively.

Conversions are only the lossless ones a hand-written YAML needs: an integer where a number is
expected, a numeric text where a number is expected (YAML 1.1 reads ``1e-3`` as text), and a whole
number such as ``1e3`` where an integer is expected. Nothing else is coerced (``"yes"`` is not true).

Two hooks, both declared on the dataclass, keep special cases out of the builder:

- ``SHORTHAND: ClassVar[str] = "name"``: a text given for the dataclass means ``{name: text}`` (a
  profile given by its name).
- ``field(metadata={"keys": func})`` on a ``dict`` field: ``func()`` returns the keys the mapping may
  hold (e.g. the fields of another dataclass, read when a mapping is checked).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, Mapping, TypeVar

from octasim.errors import OctasimError

T = TypeVar("T")


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, source: str = "config", where: str = "",
                 error: type[Exception] = OctasimError) -> T:
    """Dataclass ``cls`` built from ``data`` (None: all defaults), checked against its type hints.

    ``source`` (a file name) starts every message; ``where`` is the dotted key of ``data`` in an
    enclosing mapping (``""`` at the top level); ``error`` is the exception class raised.
    """
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise error(f"{source}: {where or 'top level'}: expected a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = _key(where, key)
        if key not in fields:
            raise error(f"{source}: unknown key {name!r} (known: {', '.join(sorted(fields))})")
        kwargs[key] = convert(value, hints[key], name, source, error, fields[key].metadata.get("keys"))
    return cls(**kwargs)


def _key(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _number(value: Any) -> float | None:
    """``value`` as a finite float if it is a number or a numeric text ("1e-3"), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def in_words(hint: Any) -> str:
    """A type hint as an imaging scientist reads it in an error message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else in_words(a) for a in args)
    if origin is list:
        item = args[0]
        plural = {int: "integers", float: "numbers", bool: "true / false values", str: "texts"}
        return f"a list of {'mappings' if dataclasses.is_dataclass(item) else plural.get(item, str(item))}"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping of keys"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a text"}.get(hint, str(hint))


def convert(value: Any, hint: Any, name: str, source: str = "config",
            error: type[Exception] = OctasimError,
            keys: Callable[[], Any] | None = None) -> Any:
    """``value`` checked against the type hint of the key ``name`` (see the module's docstring for the
    conversions); ``keys``: for a mapping, a function giving the keys it may hold. Raises ``error``
    naming the file, the key and the expected type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return convert(value, inner, name, source, error, keys)
        except error:
            pass
    elif dataclasses.is_dataclass(hint):
        shorthand = getattr(hint, "SHORTHAND", None)
        if shorthand is not None and isinstance(value, str):
            value = {shorthand: value}
        return from_mapping(hint, value, source, name, error)
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [convert(v, args[0], f"{name}[{i}]", source, error) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, Mapping):
            if keys is not None:
                known = set(keys())
                unknown = [k for k in value if k not in known]
                if unknown:
                    raise error(f"{source}: unknown key {_key(name, unknown[0])!r} (known: {', '.join(sorted(known))})")
            return dict(value)
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _number(value)
        if number is not None and number == int(number):
            return int(number)
    elif hint is float:
        number = _number(value)
        if number is not None:
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    shown = "null (no value)" if value is None else repr(value)
    raise error(f"{source}: {name}: expected {in_words(hint)}, got {shown}")
