"""The search space: which recipe parameters a search varies, over which range, per layer
group and per model.

A space is written as YAML (``wsviz search --space space.yml``) or a dict::

    method: ties                 # optional: defaults to the recipe's method
    params:
      lambda:  {low: 0.3, high: 3.0}                      # one global value
      density: {low: 0.1, high: 1.0, groups: [attn, mlp]} # one value per layer group
      weight:  {low: 0.0, high: 1.5, per_model: true}     # one value per model
      rescale: {choices: [true, false]}                   # categorical
    objectives: {over: tasks}    # optional, see wsviz.search.objectives
    constraints: {min_pretrained: true}

Each entry becomes one or more :class:`Dimension` s (optuna parameters): ``lambda``,
``density[attn]``, ``weight@digit``, ``density[mlp]@digit`` (``per_model`` and ``groups``
combine). Range keys: ``low``/``high`` (floats; ``log: true`` samples log-uniformly;
``step`` quantises; ``int: true`` for integers) or ``choices``.

Group selectors (``groups:``) pick tensors by their parsed name
(:func:`wsviz.io.parse_layer_name`): a layer group (``attn``, ``mlp``, ``norm``, ``embed``,
``head``, ``other``), a kind (``attn_q``, ``mlp_down``, ...), a block range
(``blocks:0-3``, ``blocks:5``), ``depth:K`` (expands to K contiguous bands of blocks),
``name:SUBSTRING`` (any tensor whose name contains it), or terms joined by ``+`` (all must
hold, e.g. ``mlp+depth:2`` gives two bands of MLP tensors). Groups must not overlap. Tensors
no group selects get one more dimension, ``<param>[rest]``, so every evaluated tensor is
searched.

A searched value per group is written into the recipe as a mergekit filter list, so the
result is an ordinary recipe (mergekit YAML where the method exists there): the filters are
the shortest tensor-name substrings that select exactly the group's tensors among all
tensors of the model set, followed by a catch-all entry (the ``rest`` value, or the recipe's
own value of the parameter for tensors outside the searched set).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsviz.errors import RecipeError, WsvizError
from wsviz.recipes.plain import plain as _plain

_GROUPS = ("embed", "attn", "mlp", "norm", "head", "other")
REST = "rest"


class SpaceError(WsvizError):
    """A search space is invalid (names the parameter / selector and the fix)."""


@dataclass(frozen=True)
class Dimension:
    """One searched scalar: recipe parameter ``param`` for ``model`` (None: every model /
    global) on layer group ``group`` (None: all tensors). ``low``/``high``/``log``/``step``/
    ``integer`` for numbers, ``choices`` for categoricals. ``name`` is the optuna parameter
    name (``param[group]@model``)."""

    name: str
    param: str
    model: str | None = None
    group: str | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    choices: tuple | None = None

    @property
    def numeric(self) -> bool:
        return self.choices is None

    def distribution(self):
        """The optuna distribution of this dimension."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log,
                                 step=self.step)

    def short(self, v):
        """``v`` as written in recipes: a float on a ``step`` grid rounded to the step's
        decimals (``0.30000000000000004`` -> ``0.3``), another float to 6 significant
        digits (a relative change below 5e-6, far under what a search resolves); ints,
        bools and choices unchanged."""
        if not isinstance(v, float) or self.integer or self.choices is not None:
            return v
        if self.step:
            decimals = max(0, -math.floor(math.log10(abs(float(self.step)))) + 3)
            return round(v, decimals) + 0.0
        return float(f"{v:.6g}")

    def to_unit(self, v: float) -> float:
        """``v`` mapped to [0, 1] (log scale when ``log``)."""
        lo, hi = float(self.low), float(self.high)
        if self.log:
            return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (v - lo) / (hi - lo) if hi > lo else 0.0

    def from_unit(self, u: float):
        """Inverse of :meth:`to_unit` (clipped to the range; rounded for ``step`` / ints)."""
        u = min(1.0, max(0.0, float(u)))
        lo, hi = float(self.low), float(self.high)
        v = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if self.log else \
            lo + u * (hi - lo)
        if self.step:
            v = lo + round((v - lo) / self.step) * self.step
            v = min(hi, max(lo, v))
        if self.integer:
            return int(round(v))
        return float(v)


@dataclass
class SearchSpace:
    """Dimensions over a base ``recipe``, resolved against the model set's tensor ``names``.

    Build with :meth:`from_dict` / :meth:`load`; :meth:`recipe` turns one point
    ``{dimension name: value}`` into a validated :class:`wsviz.recipes.Recipe`.
    ``filters``: ``{group: [tensor-name substrings]}``; ``members``: ``{group: tensors}``.
    """

    recipe: Any
    dims: list[Dimension]
    spec: dict = field(default_factory=dict)
    filters: dict[str, list[str]] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path, recipe, names: Sequence[str], all_names: Sequence[str] | None = None
             ) -> SearchSpace:
        """Read a YAML space file (see the module docstring); :class:`SpaceError` naming the
        file when it cannot be read."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise SpaceError(f"{p}: no such search-space file")
        try:
            d = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise SpaceError(f"{p}: not valid YAML ({e})") from None
        try:
            return cls.from_dict(d, recipe, names, all_names)
        except SpaceError as e:
            raise SpaceError(f"{p}: {e}") from None

    @classmethod
    def from_dict(cls, d: Mapping, recipe, names: Sequence[str],
                  all_names: Sequence[str] | None = None) -> SearchSpace:
        """Build the space for ``recipe`` (a :class:`~wsviz.recipes.Recipe`).

        ``names``: the tensors that are merged and evaluated (groups partition these);
        ``all_names``: every tensor of the model set (filters must select exactly a group's
        tensors among these; default ``names``). Raises :class:`SpaceError`.
        """
        from wsviz.compute.merge import get_method

        if not isinstance(d, Mapping):
            raise SpaceError("a search space is a mapping with 'params:' (and optionally "
                             "'method:')")
        unknown = set(d) - {"method", "params", "objectives", "constraints"}
        if unknown:
            raise SpaceError(f"unknown key(s) {sorted(unknown)} in the search space; valid: "
                             "method, params, objectives, constraints")
        if getattr(recipe, "slices", None) is not None:
            raise SpaceError("a slices: recipe (frankenmerge) cannot be searched: searches merge "
                             "in memory, which takes models: recipes; write it with models:")
        recipe = copy.deepcopy(recipe)
        if d.get("method") and d["method"] != recipe.method:
            recipe.method = str(d["method"])
        try:
            spec = get_method(recipe.method)
        except RecipeError as e:
            raise SpaceError(str(e)) from None
        params = d.get("params")
        if not isinstance(params, Mapping) or not params:
            raise SpaceError("the search space needs 'params:' mapping recipe parameters to "
                             "ranges, e.g. params: {lambda: {low: 0.3, high: 3.0}}")
        names = list(names)
        all_names = list(all_names) if all_names is not None else names
        dims: list[Dimension] = []
        filters: dict[str, list[str]] = {}
        members: dict[str, list[str]] = {}
        for pname, rng in params.items():
            if pname not in spec.param_names:
                raise SpaceError(f"parameter {pname!r} is not a parameter of method "
                                 f"{spec.name!r}; valid: {', '.join(spec.param_names)}")
            p = spec.param(pname)
            if not isinstance(rng, Mapping):
                raise SpaceError(f"params.{pname}: give a range {{low: .., high: ..}} or "
                                 "{choices: [..]}")
            bad = set(rng) - {"low", "high", "log", "step", "int", "choices", "groups",
                              "per_model"}
            if bad:
                raise SpaceError(f"params.{pname}: unknown key(s) {sorted(bad)}; valid: low, "
                                 "high, log, step, int, choices, groups, per_model")
            base = _range(pname, p, rng)
            per_model = bool(rng.get("per_model", False))
            if per_model and p.scope != "model":
                raise SpaceError(f"params.{pname}: per_model needs a per-model parameter; "
                                 f"{pname!r} is global for {spec.name!r}")
            models = recipe.labels if per_model else [None]
            if per_model and not models:
                raise SpaceError(f"params.{pname}: per_model, but the recipe lists no models")
            groups: list[str | None] = [None]
            if rng.get("groups"):
                sel = rng["groups"]
                sel = [sel] if isinstance(sel, str) else list(sel)
                mem = resolve_groups(sel, names, where=f"params.{pname}")
                for g, ns in mem.items():
                    if g not in filters:
                        filters[g] = [] if g == REST else tensor_filters(ns, all_names)
                        members[g] = ns
                    elif members[g] != ns:
                        raise SpaceError(f"params.{pname}: group {g!r} means different "
                                         "tensors for different parameters")
                groups = list(mem)
            for m in models:
                for g in groups:
                    nm = pname + (f"[{g}]" if g else "") + (f"@{m}" if m else "")
                    dims.append(Dimension(name=nm, param=pname, model=m, group=g, **base))
        space = cls(recipe=recipe, dims=dims, spec=_plain(d), filters=filters,
                    members=members)
        space.recipe_for(space.midpoint())  # fail now (not on a worker) if it cannot merge
        return space

    # ------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def dim(self, name: str) -> Dimension:
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(name)

    def distributions(self) -> dict:
        """``{dimension name: optuna distribution}`` (for ``study.ask``)."""
        return {d.name: d.distribution() for d in self.dims}

    def midpoint(self) -> dict:
        """A point in the middle of every range (first choice of categoricals)."""
        return {d.name: (d.from_unit(0.5) if d.numeric else d.choices[0]) for d in self.dims}

    def recipe_for(self, point: Mapping[str, Any], validate: bool = True):
        """The :class:`~wsviz.recipes.Recipe` for ``point`` (``{dim: value}``), validated
        unless ``validate=False`` (the search loop leaves that to the merge on the worker,
        which validates anyway, to keep the driver light).

        Raises :class:`RecipeError` when the values make an invalid recipe (e.g. DELLA's
        ``density ± epsilon`` rule)."""
        missing = [n for n in self.names if n not in point]
        if missing:
            raise SpaceError(f"point lacks dimension(s) {missing}")
        r = copy.deepcopy(self.recipe)
        spec = r.spec
        by_target: dict[tuple[str, str | None], dict[str | None, Any]] = {}
        for d in self.dims:  # short values: the recipe evaluated is the one exported
            by_target.setdefault((d.param, d.model), {})[d.group] = d.short(point[d.name])
        for (pname, model), vals in by_target.items():
            if list(vals) == [None]:
                setting = vals[None]
            else:
                setting = []
                for g, v in vals.items():
                    setting += [{"filter": f, "value": v} for f in self.filters.get(g, [])]
                if REST in vals:
                    fallback = vals[REST]
                else:
                    fallback = _current(r, pname, model)
                    if fallback is None:  # no value to keep: use the groups' mean
                        nums = [v for v in vals.values() if isinstance(v, (int, float))
                                and not isinstance(v, bool)]
                        fallback = sum(nums) / len(nums) if nums else next(iter(vals.values()))
                setting.append({"value": fallback})
            if model is not None:
                for m in r.models:
                    if m.model == model:
                        m.params[pname] = setting
            elif spec.param(pname).scope == "model" and r.models:
                for m in r.models:
                    m.params[pname] = setting
                r.params.pop(pname, None)
            else:
                r.params[pname] = setting
        return r.validate() if validate else r


def _current(recipe, pname: str, model: str | None):
    """The recipe's own scalar value of ``pname`` (for ``model`` or its first model), or
    None when it has none (or only a schedule)."""
    vals = []
    if model is not None:
        vals += [m.params.get(pname) for m in recipe.models if m.model == model]
    else:
        vals += [m.params.get(pname) for m in recipe.models[:1]]
    vals.append(recipe.params.get(pname))
    for v in vals:
        if isinstance(v, (int, float, bool)):
            return v
    return None


def _range(pname: str, p, rng: Mapping) -> dict:
    """Validated range keys of one ``params`` entry (see the module docstring)."""
    if "choices" in rng:
        ch = rng["choices"]
        if not isinstance(ch, (list, tuple)) or not ch:
            raise SpaceError(f"params.{pname}: choices must be a non-empty list")
        for c in ch:
            try:
                p.check(c)
            except ValueError as e:
                raise SpaceError(f"params.{pname}: choice {c!r} is invalid ({e})") from None
        if set(rng) & {"low", "high", "log", "step", "int"}:
            raise SpaceError(f"params.{pname}: give either choices or low/high, not both")
        return {"choices": tuple(ch)}
    if p.type not in (float, int):
        raise SpaceError(f"params.{pname} is a {p.type.__name__} parameter: search it with "
                         "choices: [...]")
    if "low" not in rng or "high" not in rng:
        raise SpaceError(f"params.{pname}: give low and high (or choices)")
    lo, hi = rng["low"], rng["high"]
    for k, v in (("low", lo), ("high", hi)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SpaceError(f"params.{pname}.{k} must be a finite number, got {v!r}")
        try:
            p.check(float(v))
        except ValueError as e:
            raise SpaceError(f"params.{pname}.{k}: {e} (valid range {p.range_text()})") \
                from None
    if not lo < hi:
        raise SpaceError(f"params.{pname}: low ({lo}) must be below high ({hi})")
    log = bool(rng.get("log", False))
    if log and lo <= 0:
        raise SpaceError(f"params.{pname}: log: true needs low > 0")
    step = rng.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float))
                             or step <= 0):
        raise SpaceError(f"params.{pname}.step must be a positive number")
    if step is not None and log:
        raise SpaceError(f"params.{pname}: step and log cannot be combined")
    integer = bool(rng.get("int", p.type is int))
    return {"low": float(lo), "high": float(hi), "log": log,
            "step": float(step) if step is not None else None, "integer": integer}


# -- layer groups -> tensor sets -> mergekit filters -------------------------------------------
def resolve_groups(selectors: Sequence[str], names: Sequence[str], where: str = "groups"
                   ) -> dict[str, list[str]]:
    """``{group label: tensor names}`` for the selectors (see the module docstring), with a
    ``rest`` group for tensors none selects. :class:`SpaceError` when a selector is unknown,
    selects nothing, or two groups share a tensor."""
    from wsviz.io import parse_layer_name

    names = list(names)
    parsed = {n: parse_layer_name(n) for n in names}
    blocks = sorted({p.block for p in parsed.values() if p.block is not None})
    labels: list[str] = []
    for s in selectors:
        if not isinstance(s, str) or not s.strip():
            raise SpaceError(f"{where}: group selectors are strings, got {s!r}")
        labels += _expand(s.strip(), blocks, where)
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for lab in labels:
        sel = [n for n in names if all(_term(t, parsed[n], where) for t in lab.split("+"))]
        if not sel:
            raise SpaceError(f"{where}: group {lab!r} selects no tensor (e.g. "
                             f"{names[0] if names else '-'}); valid groups: "
                             f"{', '.join(_GROUPS)}, blocks:A-B, depth:K, name:SUBSTRING")
        for n in sel:
            if n in owner:
                raise SpaceError(f"{where}: groups {owner[n]!r} and {lab!r} both select "
                                 f"tensor {n!r}; groups must not overlap")
            owner[n] = lab
        out[lab] = sel
    rest = [n for n in names if n not in owner]
    if rest:
        out[REST] = rest
    return out


def _expand(sel: str, blocks: list[int], where: str) -> list[str]:
    """Expand ``depth:K`` terms into K ``blocks:A-B`` bands (``+`` terms kept)."""
    terms = sel.split("+")
    for i, t in enumerate(terms):
        if t.startswith("depth:"):
            try:
                k = int(t.split(":", 1)[1])
            except ValueError:
                raise SpaceError(f"{where}: {t!r}: write depth:K with an integer K") from None
            if not blocks:
                raise SpaceError(f"{where}: {t!r}: these tensors have no numbered blocks")
            if not 1 <= k <= len(blocks):
                raise SpaceError(f"{where}: {t!r}: K must be between 1 and the number of "
                                 f"blocks ({len(blocks)})")
            out = []
            n = len(blocks)
            for j in range(k):
                a, b = blocks[j * n // k], blocks[(j + 1) * n // k - 1]
                band = f"blocks:{a}-{b}" if a != b else f"blocks:{a}"
                out += _expand("+".join(terms[:i] + [band] + terms[i + 1:]), blocks, where)
            return out
    return [sel]


def _term(t: str, p, where: str) -> bool:
    from wsviz.io.layers import KINDS

    if t in _GROUPS:
        return p.group == t
    if t in KINDS:
        return p.kind == t
    if t.startswith("name:") and len(t) > 5:
        return t[5:] in p.name
    if t.startswith("blocks:"):
        spec = t[7:]
        try:
            a, _, b = spec.partition("-")
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise SpaceError(f"{where}: {t!r}: write blocks:A-B or blocks:A") from None
        return p.block is not None and lo <= p.block <= hi
    raise SpaceError(f"{where}: unknown group selector {t!r}; valid: {', '.join(_GROUPS)}, a "
                     "kind (attn_q, mlp_down, ...), blocks:A-B, depth:K, name:SUBSTRING")


def tensor_filters(group: Sequence[str], all_names: Sequence[str]) -> list[str]:
    """Shortest mergekit filter strings (tensor-name substrings) that together select exactly
    ``group`` among ``all_names``: candidates are runs of dot-separated name components
    (``.mlp.``, ``.layers.3.``; never starting at a block number), chosen greedily by
    coverage, listed in tensor order. :class:`SpaceError` when a tensor
    cannot be singled out (its whole name is part of another tensor's name)."""
    gset = set(group)
    cands: set[str] = set()
    for n in gset:
        parts = n.split(".")
        k = len(parts)
        for i in range(k):
            for j in range(i + 1, k + 1):
                if parts[i].isdigit():
                    continue  # ".0." / ".1.mlp." read badly: name the block's container
                cands.add(("." if i else "") + ".".join(parts[i:j]) + ("." if j < k else ""))
    valid: dict[str, set[str]] = {}
    for c in cands:
        hit = set()
        for n in all_names:
            if c in n:
                if n not in gset:
                    break
                hit.add(n)
        else:
            valid[c] = hit
    out: list[str] = []
    todo = set(gset)
    while todo:
        best = max(valid, key=lambda c: (len(valid[c] & todo), -len(c), c), default=None)
        if best is None or not valid[best] & todo:
            n = sorted(todo)[0]
            raise SpaceError(f"tensor {n!r} cannot be selected by a name filter without also "
                             "selecting other tensors (its name is part of another's)")
        out.append(best)
        todo -= valid[best]
    order = {n: i for i, n in enumerate(all_names)}
    return sorted(out, key=lambda c: min(order.get(n, 0) for n in valid[c]))


