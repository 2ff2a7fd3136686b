"""Per-tensor parameter resolution as mergekit does it: gradients over layers, filters.

A parameter *setting* is one of

* a scalar (``0.5``, ``true``),
* a gradient: a list of scalars interpolated over the layer position ``t`` in [0, 1]
  (``scaled = t (k-1)``, linear between the two neighbouring knots; bool/str lists pick
  ``values[int(t (k-1))]``),
* a filter entry ``{"filter": "self_attn", "value": <scalar or gradient>}`` or a list of
  them: the first entry whose filter is missing, ``"*"`` or a substring of the tensor name
  wins; no match resolves to ``None`` (the next scope, then the default, applies).

The layer position of a tensor in block ``i`` of ``L`` blocks is ``i / (L - 1)`` (1 when
``L == 1``); tensors outside the blocks (embeddings, final norm, head) get ``t = 0``, as
in mergekit's planner (which evaluates pre- and post-block weights at ``t = 0``).
Precedence for per-model parameters: the model's own setting, then the global one, then
the method default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from wsviz.errors import RecipeError

SCALARS = (bool, int, float, str)


def _is_scalar(x) -> bool:
    return isinstance(x, SCALARS)


def coerce(typ: type, value: Any) -> Any:
    """Convert a scalar to ``typ`` like mergekit's pydantic validation (no range check)."""
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if typ is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def evaluate_setting(setting: Any, tensor_name: str, t: float, typ: type = float) -> Any:
    """Resolve one setting (see the module docstring) for ``tensor_name`` at position ``t``.

    Returns the scalar value, or ``None`` when a filter list matches nothing.
    """
    if isinstance(setting, Mapping):
        setting = [setting]
    if _is_scalar(setting):
        return coerce(typ, setting)
    if isinstance(setting, (list, tuple)):
        if not setting:
            return None
        if all(_is_scalar(e) for e in setting):
            values = [coerce(typ, e) for e in setting]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                return values[int(t * (len(values) - 1))]
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return coerce(typ, (1 - frac) * values[i0] + frac * values[i1])
        for cond in setting:
            if not isinstance(cond, Mapping):
                raise RecipeError(f"cannot mix filter entries and plain values: {setting!r}")
            flt = cond.get("filter")
            if flt is None or flt == "*" or (tensor_name and flt in tensor_name):
                return evaluate_setting(cond.get("value"), tensor_name, t, typ)
        return None
    raise RecipeError(f"unexpected parameter setting {setting!r}")


def layer_positions(names: Iterable[str]) -> dict[str, float]:
    """``{name: t}``: block ``i`` of ``L`` → ``i / (L-1)`` (1 if ``L == 1``), others 0."""
    from wsviz.io import parse_layer_name

    names = list(names)
    blocks = {n: parse_layer_name(n).block for n in names}
    present = [b for b in blocks.values() if b is not None]
    n_blocks = max(present) + 1 if present else 0
    out = {}
    for n, b in blocks.items():
        if b is None:
            out[n] = 0.0
        else:
            out[n] = b / (n_blocks - 1) if n_blocks > 1 else 1.0
    return out


def resolve_params(spec, global_params: Mapping, model_params: Sequence[Mapping],
                   tensor_name: str, t: float) -> dict[str, Any]:
    """Values of every parameter of ``spec`` for one tensor: scalars for global ones, lists
    (one per model) for per-model ones. RecipeError when a required one resolves to nothing.
    """
    from wsviz.compute.merge.spec import REQUIRED

    def lookup(name, typ, scopes):
        for scope in scopes:
            if name in scope:
                v = evaluate_setting(scope[name], tensor_name, t, typ)
                if v is not None:
                    return v
        return None

    out: dict[str, Any] = {}
    for p in spec.params:
        if p.scope == "global":
            v = lookup(p.name, p.type, (global_params,))
            if v is None:
                if p.default is REQUIRED:
                    raise RecipeError(f"{spec.name}: parameter {p.name!r} has no value for "
                                      f"tensor {tensor_name!r}; set it under parameters")
                v = p.default
            out[p.name] = v
        else:
            vals = []
            for i, mp in enumerate(model_params):
                v = lookup(p.name, p.type, (mp, global_params))
                if v is None:
                    if p.default is REQUIRED:
                        raise RecipeError(
                            f"{spec.name}: parameter {p.name!r} has no value for model #{i} "
                            f"at tensor {tensor_name!r}; set it for the model or globally")
                    v = p.default
                vals.append(v)
            out[p.name] = vals
    return out


def _entries(setting: Any) -> list:
    """The scalars and filter entries (mappings) of a setting, lists flattened."""
    if isinstance(setting, (list, tuple)):
        return [x for e in setting for x in _entries(e)]
    return [setting]


def setting_scalars(setting: Any) -> list:
    """Every scalar appearing in a setting (gradient knots, filter values)."""
    out = []
    for e in _entries(setting):
        if isinstance(e, Mapping):
            out.extend(setting_scalars(e.get("value")))
        elif _is_scalar(e):
            out.append(e)
    return out


def setting_filters(setting: Any) -> list[str]:
    """Filter strings used in a setting."""
    return [e["filter"] for e in _entries(setting)
            if isinstance(e, Mapping) and isinstance(e.get("filter"), str)]


def check_setting_shape(setting: Any, where: str) -> None:
    """RecipeError unless ``setting`` is a scalar, a gradient, or filter entry/entries."""
    if _is_scalar(setting):
        return
    if isinstance(setting, Mapping):
        extra = set(map(str, setting)) - {"filter", "value"}
        if extra or "value" not in setting:
            raise RecipeError(f"{where}: a filter entry has keys 'filter' and 'value' "
                              f"(got {sorted(map(str, setting))})")
        if setting.get("filter") is not None and not isinstance(setting["filter"], str):
            raise RecipeError(f"{where}: filter must be a string")
        v = setting["value"]
        if not (_is_scalar(v) or (isinstance(v, (list, tuple)) and v
                                  and all(_is_scalar(e) for e in v))):
            raise RecipeError(f"{where}: a filter value is a scalar or a gradient list")
        return
    if isinstance(setting, (list, tuple)):
        if not setting:
            raise RecipeError(f"{where}: empty list")
        if all(_is_scalar(e) for e in setting):
            return
        if all(isinstance(e, Mapping) for e in setting):
            for e in setting:
                check_setting_shape(e, where)
            return
        raise RecipeError(f"{where}: cannot mix filter entries and plain values")
    r = repr(setting)
    raise RecipeError(f"{where}: unsupported value {r[:80] + '...' if len(r) > 80 else r} "
                      "(a number, true/false, a string, a gradient list or filter entries)")
