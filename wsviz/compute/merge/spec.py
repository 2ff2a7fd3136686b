"""Declarative description of merge methods: :class:`ParamSpec`, :class:`MethodSpec`.

The UI builds its widgets from these specs; the recipe validator checks names, scopes and
ranges against them; export to mergekit uses ``in_mergekit`` and the parameter names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: marker default of a parameter the user must give (mergekit's required ``weight``)
REQUIRED = object()


@dataclass(frozen=True)
class ParamSpec:
    """One method parameter.

    ``type``: ``float`` | ``bool`` | ``int`` | ``str``; ``default``: value or :data:`REQUIRED`;
    ``scope``: ``"model"`` (one value per input model, may also be given globally as a
    fallback, as mergekit does) or ``"global"`` (one value per tensor);
    ``range``: ``(low, high)`` closed bounds (``None`` for unbounded sides) with
    ``open_low`` / ``open_high`` making a bound exclusive; ``choices`` for ``str``;
    ``doc``: a one-line description for tooltips; ``ui_range``: a sensible slider range.
    """

    name: str
    type: type
    default: Any
    scope: str
    doc: str
    range: tuple[float | None, float | None] | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] | None = None
    ui_range: tuple[float, float] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, value: Any) -> Any:
        """Coerce a scalar ``value`` to ``type`` and check its range.

        Numbers must be finite (NaN and ±inf are refused whatever the range: a NaN compares
        false with every bound and would turn a whole merge into NaN).
        Raises ``ValueError`` (with a short reason) when it is invalid.
        """
        t = self.type
        if t is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false, got {value!r}")
            return value
        if t in (float, int):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{self.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{self.name} must be a finite number, got {value!r}")
            v = t(value)
            if t is int and v != value:
                raise ValueError(f"{self.name} must be an integer, got {value!r}")
            if self.range is not None:
                lo, hi = self.range
                if lo is not None and (v < lo or (self.open_low and v == lo)):
                    raise ValueError(f"{self.name}={value} is outside {self.range_text()}")
                if hi is not None and (v > hi or (self.open_high and v == hi)):
                    raise ValueError(f"{self.name}={value} is outside {self.range_text()}")
            return v
        if t is str:
            if not isinstance(value, str):
                raise ValueError(f"{self.name} must be a string, got {value!r}")
            if self.choices and value not in self.choices:
                raise ValueError(f"{self.name}={value!r} is not one of {list(self.choices)}")
            return value
        return value

    def range_text(self) -> str:
        if self.range is None:
            return "any value"
        lo, hi = self.range
        a = "(" if self.open_low else "["
        b = ")" if self.open_high else "]"
        return f"{a}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{b}"


@dataclass(frozen=True)
class MethodSpec:
    """A merge method.

    ``fn(base, models, params, *, generator=None, cache=None) -> Tensor`` merges one tensor:
    ``base`` ``[*shape]`` (or ``None`` when the method takes none), ``models``
    ``[n, *shape]`` (may be ``None`` when ``cache["deltas"]`` holds ``models - base``),
    ``params`` maps every parameter name to its resolved value for this tensor (a list of
    ``n`` values for ``scope="model"`` parameters, a scalar otherwise).
    ``needs_base``: a base model is required; ``min_models`` / ``max_models`` count the
    models besides the base; ``in_mergekit``: exported YAML reproduces the result;
    ``random``: draws from ``generator`` (set the recipe's ``seed``);
    ``needs``: extra inputs the method needs (``"fisher"``, ``"evaluator"``); the merge
    engines refuse a recipe without them (:func:`wsviz.recipes.needs.check_needs`);
    ``optional_base``: the method works with or without a base (mergekit's optional base:
    with one, ``fn`` gets it and works on task vectors; without, ``base`` is ``None``);
    ``check(params)``: optional rule on one tensor's resolved parameters, raising
    ``ValueError`` with a short reason (the recipe validator probes it over layers/filters).
    ``model_stats``: ``(n_models, params) -> WholeModelStats | None`` for methods that need
    statistics over the whole model before merging a tensor (see
    :mod:`wsviz.compute.merge.whole_model`); the engines pass ``cache["model_stats"]``.

    dtype contract (mergekit's semantics, applied by :func:`wsviz.recipes.engine.merge_one`
    for every method): ``base``, ``models`` and ``cache["deltas"]`` arrive already in the
    compute dtype — the recipe's ``dtype``, else the inputs' stored dtypes promoted (bf16
    checkpoints arrive as bf16). ``fn`` must do its arithmetic in that dtype exactly where
    mergekit's method does (deltas, masks, rescale factors, random draws, sums, weights as
    ``torch.tensor(w, dtype=...)``), upcasting only where mergekit upcasts (e.g. linear and
    SLERP in float32), and return ``[*shape]`` in the dtype mergekit's method returns
    (usually the compute dtype); the driver then casts to ``out_dtype``. Use
    ``_util.get_models`` for model tensors (exact ones, not ``base + deltas``), and
    :mod:`wsviz.compute.trim` for magnitude top-k / slices (mergekit's tie order).
    Parity tests compare bit for bit (``torch.equal``) with mergekit in fp32 and bf16.
    """

    name: str
    params: tuple[ParamSpec, ...]
    needs_base: bool
    min_models: int
    max_models: int | None
    in_mergekit: bool
    fn: Callable
    doc: str
    reference: str = ""
    random: bool = False
    needs: tuple[str, ...] = field(default=())
    optional_base: bool = False
    check: Callable | None = None
    model_stats: Callable | None = None

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def defaults(self) -> dict[str, Any]:
        """``{name: default}`` of the parameters that have one."""
        return {p.name: p.default for p in self.params if not p.required}


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to :data:`METHODS` (names are unique)."""
    if spec.name in METHODS:
        raise ValueError(f"merge method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec
