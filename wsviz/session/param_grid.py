"""Slider grids on round numbers and validation of typed parameter values (pure Python).

A slider from ``lo`` to ``hi`` in ``(hi - lo) / 100`` steps cannot reach round values
(weights from -1 in steps of 0.03 miss 0.3; densities from 0.01 in steps of 0.0099 give
``0.3961``). :func:`slider_grid` instead picks a *nice* step (1, 2 or 5 × 10^k, at most
``max_steps`` steps over the span) and anchors the ends on multiples of it, so every slider
position is a round number; :func:`tidy` removes binary noise (``0.30000000000000004`` →
``0.3``); :func:`check_value` validates a typed value against the parameter's valid range
with a one-line message naming the parameter and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wsviz.errors import RecipeError

#: significant digits kept by :func:`tidy`
DIGITS = 10


def nice_step(span: float, max_steps: int = 100) -> float:
    """The smallest step of the form 1, 2 or 5 × 10^k that covers ``span`` in at most
    ``max_steps`` steps (span 1 → 0.01, span 3 → 0.05, span 2 → 0.02, span 0.2 → 0.002).
    A non-positive or non-finite span gives 0.01."""
    if not math.isfinite(span) or span <= 0:
        return 0.01
    raw = span / max_steps
    k = math.floor(math.log10(raw))
    for exp in (k, k + 1):
        for m in (1, 2, 5):
            step = tidy(m * 10.0 ** exp)
            if span / step <= max_steps + 1e-9:
                return step
    return tidy(10.0 ** (k + 2))  # pragma: no cover - the loop always returns


def tidy(value: float, step: float | None = None) -> float:
    """``value`` without binary noise: snapped to the nearest multiple of ``step`` when it
    lies within 1e-6 steps of one (slider positions), then rounded to :data:`DIGITS`
    significant digits. ``tidy(0.1 + 0.2) == 0.3``; ``tidy(0.3961) == 0.3961``."""
    v = float(value)
    if not math.isfinite(v):
        return v
    if step:
        q = v / step
        if abs(q - round(q)) < 1e-6:
            v = round(q) * step
    return float(f"{v:.{DIGITS}g}") if v != 0 else 0.0


@dataclass(frozen=True)
class SliderGrid:
    """``start``, ``end`` and ``step`` of a slider whose every position is a multiple of
    ``step``, and the ``value`` it shows."""

    start: float
    end: float
    step: float
    value: float


def slider_grid(lo: float, hi: float, value: float | None = None, *, integer: bool = False,
                open_low: bool = False, max_steps: int = 100) -> SliderGrid:
    """A round grid over ``[lo, hi]`` (the parameter's slider range).

    ``step`` = :func:`nice_step` of the span (1 or more for ``integer``); ``start`` / ``end``
    are ``lo`` / ``hi`` rounded inwards to multiples of ``step`` (``start`` moves one step up
    when ``open_low`` and it equals ``lo``: ``density`` in (0, 1] starts at 0.01); a
    ``value`` outside that range widens it to the enclosing multiples of ``step`` (typed
    values are never clamped). ``value`` None shows ``start``.
    """
    lo, hi = float(lo), float(hi)
    if hi < lo:
        lo, hi = hi, lo
    step = nice_step(hi - lo, max_steps)
    if integer:
        step = float(max(1, round(step)))
    start = tidy(math.ceil(lo / step - 1e-9) * step)
    end = tidy(math.floor(hi / step + 1e-9) * step)
    if open_low and start <= lo:
        start = tidy(start + step)
    if end < start:
        end = start
    v = start if value is None or not math.isfinite(float(value)) else float(value)
    if v < start:
        start = tidy(math.floor(v / step + 1e-9) * step)
    if v > end:
        end = tidy(math.ceil(v / step - 1e-9) * step)
    return SliderGrid(start, end, step, v)


def range_text(valid: tuple | None, open_low: bool = False, open_high: bool = False) -> str:
    """``(0, 1]``-style text of a valid range (``any number`` when unbounded)."""
    if valid is None or valid == (None, None):
        return "any number"
    lo, hi = valid
    return (f"{'(' if open_low else '['}{'-inf' if lo is None else _num(lo)}, "
            f"{'inf' if hi is None else _num(hi)}{')' if open_high else ']'}")


def _num(x: float) -> str:
    return f"{tidy(x):g}"


def check_value(name: str, value, valid: tuple | None = None, open_low: bool = False,
                open_high: bool = False, integer: bool = False) -> float | int:
    """A typed ``value`` for parameter ``name``, checked against its ``valid`` range
    ``(lo, hi)`` (None for an open side; ``open_low`` / ``open_high`` exclude the bound) and
    returned tidied (an int when ``integer``). RecipeError with one line naming the
    parameter, the range and the fix when it is not a finite number or lies outside."""
    rng = range_text(valid, open_low, open_high)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{name}: {value!r} is not a number; type a number in {rng}"
                          ) from None
    if not math.isfinite(v):
        raise RecipeError(f"{name}: {value!r} is not a finite number; type a number in {rng}")
    if integer:
        if v != int(v):
            raise RecipeError(f"{name} must be a whole number, got {value!r}; type an "
                              f"integer in {rng}")
        v = int(v)
    if valid is not None:
        lo, hi = valid
        if lo is not None and (v < lo or (open_low and v == lo)) or \
                hi is not None and (v > hi or (open_high and v == hi)):
            raise RecipeError(f"{name} = {_num(v)} is outside {rng}; type a value in that "
                              "range")
    return v if integer else tidy(v)
