"""Values that are fixed or drawn per sample from a range ``[lo, hi]``: one parser, one check
(the same error for lo > hi everywhere: profiles, ``SynthConfig``, ``octasim generate``), one draw."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

#: a fixed value, or [lo, hi] with lo < hi
ValueOrRange = float | list[float]


def check_order(lo: float, hi: float, name: str, value: Any = None,
                error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming ``name`` when ``lo > hi`` (``value``: what the user wrote)."""
    if lo > hi:
        shown = [lo, hi] if value is None else value
        raise error(f"{name}: range {shown!r} has lo > hi (a range is [lo, hi] with lo <= hi)")


def parse_range(value: Any, name: str, error: type[Exception] = ValueError) -> ValueOrRange:
    """A finite number, or a range [lo, hi] of two finite numbers with lo <= hi, as floats;
    ``[v]`` and ``[v, v]`` give ``v``. Anything else raises ``error`` naming ``name``."""
    if isinstance(value, (list, tuple, np.ndarray)):
        try:
            vals = [float(v) for v in np.asarray(value, dtype=float).ravel()]
        except (TypeError, ValueError):
            vals = []
        if len(vals) == 1:
            vals = vals * 2
        if len(vals) != 2 or not all(math.isfinite(v) for v in vals):
            raise error(f"{name} must be a number or a range [lo, hi] of two numbers, got {value!r}")
        check_order(vals[0], vals[1], name, value, error)
        return vals[0] if vals[0] == vals[1] else vals
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a number or a range [lo, hi], got {value!r}") from None
    if not math.isfinite(v):
        raise error(f"{name} must be finite, got {value!r}")
    return v


def bounds(value: ValueOrRange) -> tuple[float, float]:
    """(lo, hi) of a value or range."""
    if isinstance(value, (list, tuple)):
        return float(value[0]), float(value[1])
    return float(value), float(value)


def draw(value: ValueOrRange, rng: np.random.Generator, log: bool = False) -> float:
    """A fixed value (no randomness used), or uniform in [lo, hi]; ``log``: log-uniform (lo > 0)."""
    lo, hi = bounds(value)
    if lo == hi:
        return lo
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if log else float(rng.uniform(lo, hi))
