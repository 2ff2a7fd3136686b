"""mergekit ``slices:`` recipes: output layers built from layer ranges of the inputs.

A recipe with ``slices`` (instead of ``models``) lists output slices; each has ``sources``
— a model, its ``layer_range`` ``[start, end)`` and per-source ``params`` — all of the same
length, and optionally its own ``base`` and ``params``. The output's layers are the slices'
layers in order, renumbered from 0, so the layer count may differ from the inputs'
(``passthrough`` stacking ranges of several models is a *frankenmerge*). As in mergekit's
planner:

* output layer ``j`` of a slice merges the sources' layers ``start + j`` with the recipe's
  method, at layer position ``t = j / (len - 1)`` within the slice (1 for a one-layer slice);
* tensors outside the blocks come from the first slice's sources (embeddings: names with
  ``embed``) or the last slice's (final norm, LM head), at ``t = 0``;
* the slice's base (else the recipe's) must be one of its sources for methods that take a
  base; methods without one (``linear``, ``karcher``, ``passthrough``) merge every source;
* parameter precedence: per-model values from the source, then the slice, then the
  recipe, evaluated with that model's *input* tensor name; global values from the slice,
  then the recipe, with the *output* tensor name;
* tensors are merged in the order of their largest input name (mergekit's schedule), so
  random methods draw the same stream; the output ``config.json`` is the base's (else the
  first source model's) with its layer count set to the output's.

The in-memory merger takes ``models:`` recipes only; slices merge to disk
(:func:`merge_slices_to_dir`, used by :func:`wsviz.recipes.merge_to_dir`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsviz.errors import RecipeError
from wsviz.recipes.plain import plain as _plain
from wsviz.recipes.schedule import evaluate_setting
from wsviz.recipes.validation import (
    check_global_params,
    check_model_count,
    check_resolved,
    check_values,
)

#: config.json keys holding the number of blocks, first match is updated
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")



@dataclass
class SliceSource:
    """One source of a slice: ``model`` (path or label), ``layer_range`` ``(start, end)``
    (blocks ``start .. end-1``) and per-source ``params``."""

    model: str
    layer_range: tuple[int, int]
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        lr = self.layer_range
        if (not isinstance(lr, (list, tuple)) or len(lr) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in lr)
                or not 0 <= lr[0] < lr[1]):
            raise RecipeError(f"source {self.model!r}: layer_range must be [start, end] with "
                              f"integers 0 <= start < end, got {lr!r}")
        self.layer_range = (int(lr[0]), int(lr[1]))
        self.params = _mapping(self.params, f"source {self.model!r}: params")
        if not isinstance(self.model, str):
            raise RecipeError(f"a slice source's model must be a path string, got "
                              f"{self.model!r}")

    @property
    def length(self) -> int:
        return self.layer_range[1] - self.layer_range[0]

    def to_dict(self) -> dict:
        return {"model": self.model, "layer_range": list(self.layer_range),
                "params": _plain(self.params)}


@dataclass
class OutputSlice:
    """One output slice: its ``sources`` (equal lengths), optional ``base`` and ``params``."""

    sources: list[SliceSource]
    base: str | None = None
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        srcs = []
        if not isinstance(self.sources, (list, tuple)):
            raise RecipeError(f"a slice's sources must be a list, got {self.sources!r}")
        for s in self.sources:
            if isinstance(s, SliceSource):
                srcs.append(s)
            elif isinstance(s, Mapping):
                bad = set(map(str, s)) - {"model", "layer_range", "params"}
                if bad or "model" not in s or "layer_range" not in s:
                    raise RecipeError(f"a slice source has keys model, layer_range, params; "
                                      f"got {sorted(map(str, s))}")
                srcs.append(SliceSource(s["model"], s["layer_range"], s.get("params")))
            else:
                raise RecipeError(f"cannot read slice source {s!r}")
        self.sources = srcs
        self.params = _mapping(self.params, "a slice's params")
        if self.base is not None and not isinstance(self.base, str):
            raise RecipeError(f"a slice's base must be a path string, got {self.base!r}")

    @property
    def length(self) -> int:
        return self.sources[0].length if self.sources else 0

    def source(self, model: str) -> SliceSource:
        return next(s for s in self.sources if s.model == model)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"sources": [s.to_dict() for s in self.sources]}
        if self.base is not None:
            d["base"] = self.base
        if self.params:
            d["params"] = _plain(self.params)
        return d

    # -- mergekit ----------------------------------------------------------------------
    def to_mergekit(self, ref) -> dict:
        srcs = []
        for s in self.sources:
            e: dict[str, Any] = {"model": ref(s.model), "layer_range": list(s.layer_range)}
            if s.params:
                e["parameters"] = _plain(s.params)
            srcs.append(e)
        d: dict[str, Any] = {"sources": srcs}
        if self.base is not None:
            d["base_model"] = ref(self.base)
        if self.params:
            d["parameters"] = _plain(self.params)
        return d

    @classmethod
    def from_mergekit(cls, d, i: int) -> OutputSlice:
        if not isinstance(d, Mapping):
            raise RecipeError(f"slices[{i}] must be a mapping with 'sources:'")
        if "residual_weight" in d:
            raise RecipeError(f"slices[{i}]: residual_weight has no effect in mergekit 0.1.5 "
                              f"(it is read and ignored); remove it")
        bad = set(map(str, d)) - {"sources", "base_model", "parameters"}
        if bad:
            raise RecipeError(f"unknown key(s) {sorted(bad)} in slices[{i}]; valid keys: "
                              f"sources, base_model, parameters")
        raw = d.get("sources")
        if not isinstance(raw, list) or not raw:
            raise RecipeError(f"slices[{i}]: 'sources:' must be a non-empty list")
        srcs = []
        for e in raw:
            if not isinstance(e, Mapping) or "model" not in e or "layer_range" not in e:
                raise RecipeError(f"slices[{i}]: each source needs 'model:' and "
                                  f"'layer_range:'; got {e!r}")
            bad = set(map(str, e)) - {"model", "layer_range", "parameters"}
            if bad:
                raise RecipeError(f"unknown key(s) {sorted(bad)} in a source of slices[{i}]; "
                                  f"valid keys: model, layer_range, parameters")
            if not isinstance(e["model"], str):
                raise RecipeError(f"slices[{i}]: model must be a path string, got "
                                  f"{e['model']!r}")
            srcs.append(SliceSource(e["model"], e["layer_range"],
                                    _mapping(e.get("parameters"), f"slices[{i}] parameters")))
        base = d.get("base_model")
        if base is not None and not isinstance(base, str):
            raise RecipeError(f"slices[{i}]: base_model must be a path string, got {base!r}")
        return cls(srcs, base, _mapping(d.get("parameters"), f"slices[{i}] parameters"))


def _mapping(x, where: str) -> dict:
    """``x`` as a parameter dict (None -> {}); RecipeError unless a mapping of names."""
    if x is None:
        return {}
    if not isinstance(x, Mapping) or not all(isinstance(k, str) for k in x):
        raise RecipeError(f"{where} must be a mapping of parameter names to values, got "
                          f"{x!r:.80}")
    return dict(x)


def as_slices(x) -> list[OutputSlice] | None:
    """Coerce ``x`` (None, or a list of :class:`OutputSlice` / dicts) to output slices."""
    if x is None:
        return None
    if not isinstance(x, (list, tuple)):
        raise RecipeError(f"slices must be a list of slices, got {type(x).__name__}")
    out = []
    for i, s in enumerate(x):
        if isinstance(s, OutputSlice):
            out.append(s)
        elif isinstance(s, Mapping):
            bad = set(map(str, s)) - {"sources", "base", "params"}
            if bad:
                raise RecipeError(f"slices[{i}]: a slice has keys sources, base, params; got "
                                  f"{sorted(map(str, s))}")
            out.append(OutputSlice(s.get("sources") or [], s.get("base"),
                                   _mapping(s.get("params"), f"slices[{i}] params")))
        else:
            raise RecipeError(f"cannot read slices[{i}]: {s!r}")
    return out


# --- validation -------------------------------------------------------------------------------
def slice_roles(spec, sl: OutputSlice, recipe_base: str | None):
    """``(base, inputs)`` of one slice for ``spec``: the base model (``None`` for methods
    that take none) and the other sources' models, in source order."""
    takes_base = spec.needs_base or spec.optional_base
    base = (sl.base or recipe_base) if takes_base else None
    return base, [s.model for s in sl.sources if s.model != base]


def validate_slices(recipe) -> None:
    """Strict checks of a slices recipe (raises RecipeError naming the slice / parameter):
    no ``models`` beside ``slices``; equal source lengths; no model twice in a slice; the
    base among the sources; model counts; parameter names, scopes, values; required
    parameters; the method's per-tensor rules (via a flat view of each slice)."""
    spec = recipe.spec
    if recipe.models:
        raise RecipeError("a recipe has either 'models' or 'slices', not both")
    if spec.needs:
        raise RecipeError(f"method {spec.name!r} needs {', '.join(spec.needs)} inputs that "
                          f"slices cannot give; use 'models:'")
    if not recipe.slices:
        raise RecipeError("'slices' must be a non-empty list")
    check_global_params(spec, recipe.params)
    for i, sl in enumerate(recipe.slices):
        where = f"slices[{i}]"
        base, inputs = _check_slice_roles(spec, sl, recipe.base, where)
        check_global_params(spec, sl.params, where)
        _check_source_params(spec, sl, base, where)
        _check_slice_required(spec, sl, inputs, recipe.params, where)
        check_resolved(spec, {**recipe.params, **sl.params},
                       [sl.source(m).params for m in inputs])


def _check_slice_roles(spec, sl: OutputSlice, recipe_base: str | None, where: str):
    """``(base, inputs)`` of slice ``where`` after checking its sources (equal lengths, no
    model twice), its base (taken by the method, among the sources) and the model count."""
    if not sl.sources:
        raise RecipeError(f"{where}: a slice needs at least one source")
    lengths = {s.length for s in sl.sources}
    if len(lengths) != 1:
        raise RecipeError(f"{where}: all sources must span the same number of layers; got "
                          f"{[list(s.layer_range) for s in sl.sources]}")
    models = [s.model for s in sl.sources]
    if len(set(models)) != len(models):
        raise RecipeError(f"{where}: a model is listed twice among the sources: {models}")
    base, inputs = slice_roles(spec, sl, recipe_base)
    if sl.base is not None and not (spec.needs_base or spec.optional_base):
        raise RecipeError(f"{where}: base_model has no effect for {spec.name!r} (it takes "
                          f"no base); remove it or list that model as a source")
    if spec.needs_base and not base:
        raise RecipeError(f"method {spec.name!r} needs a base model: set base_model (for "
                          f"the recipe or the slice) to one of the sources of {where}")
    if base is not None and base not in models:
        raise RecipeError(f"{where}: the base {base!r} is not among its sources; list it "
                          f"with the same layer_range (mergekit requires the base among a "
                          f"slice's sources)")
    n = len(inputs)
    check_model_count(spec, n, "source(s)", f" in {where}")
    return base, inputs


def _check_source_params(spec, sl: OutputSlice, base: str | None, where: str) -> None:
    """Per-source parameters of slice ``where``: known, per-model in scope, not on the base,
    valid values."""
    valid = spec.param_names
    per_model_names = [p.name for p in spec.params if p.scope == "model"]
    for s in sl.sources:
        for k, v in s.params.items():
            if k not in valid:
                raise RecipeError(f"unknown parameter {k!r} for source {s.model!r} of "
                                  f"{where}; valid per-model parameters: "
                                  f"{', '.join(per_model_names) or '(none)'}")
            if spec.param(k).scope != "model":
                raise RecipeError(f"{k!r} is a global parameter of {spec.name!r}; set it "
                                  f"for {where} or the recipe, not for source {s.model!r}")
            if s.model == base:
                raise RecipeError(f"source {s.model!r} is the base of {where}: per-model "
                                  f"parameters apply to the other sources (mergekit "
                                  f"ignores {k!r} here)")
            check_values(spec.param(k), v, f"{where} source {s.model!r}")


def _check_slice_required(spec, sl: OutputSlice, inputs: list[str], recipe_params,
                          where: str) -> None:
    """Every required parameter is set for slice ``where`` (per source, the slice or the
    recipe)."""
    for p in spec.params:
        if not p.required:
            continue
        if p.scope == "global" and p.name not in sl.params and p.name not in recipe_params:
            raise RecipeError(f"method {spec.name!r} needs parameter {p.name!r} ({where})")
        if p.scope == "model":
            for m in inputs:
                if not any(p.name in d for d in (sl.source(m).params, sl.params,
                                                  recipe_params)):
                    raise RecipeError(f"source {m!r} of {where} has no {p.name!r}; set it "
                                      f"for the source, the slice or globally")


# --- planning ---------------------------------------------------------------------------------
@dataclass
class TensorPlan:
    """One output tensor: its ``name``, layer position ``t``, the output slice whose
    sources and parameters apply, and ``inputs`` ``{model: input tensor name}``."""

    name: str
    t: float
    slice: int
    inputs: dict[str, str]

    @property
    def order_key(self) -> tuple[str, str]:
        """mergekit's schedule: by the largest input tensor name (then the output name)."""
        return max(self.inputs.values()), self.name


def _layers(src) -> tuple[dict[int, dict[tuple[str, str], str]], list[str]]:
    """``({block: {(prefix, suffix): name}}, names outside the blocks)`` of a source."""
    from wsviz.io.layers import split_block

    aliases = src.aliases()
    blocks: dict[int, dict[tuple[str, str], str]] = {}
    other = []
    for n in src.names():
        if n in aliases:
            continue
        sp = split_block(n)
        if sp is None:
            other.append(n)
        else:
            blocks.setdefault(sp[1], {})[(sp[0], sp[2])] = n
    return blocks, other


def _is_pre(name: str) -> bool:
    """Tensors before the blocks (embeddings); the rest outside blocks comes after them."""
    from wsviz.io import parse_layer_name

    return parse_layer_name(name).kind == "embed" or "embed" in name


def plan_slices(recipe, sources: Mapping[str, Any]) -> tuple[list[TensorPlan], int]:
    """Output tensors of a slices recipe and the output's layer count.

    ``sources`` maps each model of the slices to its opened checkpoint
    (:class:`~wsviz.io.CheckpointSource`). RecipeError when a layer range exceeds a model's
    blocks or a source lacks a tensor the first source has.
    """
    slices = recipe.slices
    layout = {m: _layers(src) for m, src in sources.items()}
    for m, (blocks, _) in layout.items():
        stacks = sorted({p for keys in blocks.values() for p, _ in keys})
        if len(stacks) > 1:
            raise RecipeError(f"{m}: slices need one stack of layers, this model has "
                              f"{len(stacks)} ({', '.join(stacks)}); merge it with 'models:'")
    for i, sl in enumerate(slices):
        for s in sl.sources:
            blocks = layout[s.model][0]
            n_blocks = max(blocks) + 1 if blocks else 0
            if s.layer_range[1] > n_blocks:
                raise RecipeError(f"slices[{i}]: layer_range {list(s.layer_range)} of "
                                  f"{s.model!r} exceeds its {n_blocks} layers")
    plans: list[TensorPlan] = []
    first = slices[0].sources[0].model
    for name in layout[first][1]:
        i = 0 if _is_pre(name) else len(slices) - 1
        ins = {}
        for s in slices[i].sources:
            if name not in sources[s.model]:
                raise RecipeError(f"slices[{i}]: {s.model!r} has no tensor {name!r} (the first "
                                  f"source has it)")
            ins[s.model] = name
        plans.append(TensorPlan(name, 0.0, i, ins))
    out_layer = 0
    for i, sl in enumerate(slices):
        n = sl.length
        ref = sl.sources[0]
        for j in range(n):
            t = j / (n - 1) if n > 1 else 1.0
            keys = layout[ref.model][0].get(ref.layer_range[0] + j, {})
            for (prefix, suffix) in keys:
                ins = {}
                for s in sl.sources:
                    layer = s.layer_range[0] + j
                    nm = layout[s.model][0].get(layer, {}).get((prefix, suffix))
                    if nm is None:
                        raise RecipeError(f"slices[{i}]: {s.model!r} has no tensor "
                                          f"{prefix}{layer}{suffix!s} (layer {layer} of its "
                                          f"layer_range); the sources' layers must match")
                    ins[s.model] = nm
                plans.append(TensorPlan(f"{prefix}{out_layer}{suffix}", t, i, ins))
            out_layer += 1
    return plans, out_layer


def resolve_slice_params(recipe, plan: TensorPlan, inputs: list[str]) -> dict[str, Any]:
    """Parameter values of one output tensor (see the module docstring for precedence):
    scalars for global parameters, lists over ``inputs`` for per-model ones."""
    spec = recipe.spec
    sl = recipe.slices[plan.slice]

    def lookup(p, scopes, name):
        for sc in scopes:
            if p.name in sc:
                v = evaluate_setting(sc[p.name], name, plan.t, p.type)
                if v is not None:
                    return v
        return None

    out: dict[str, Any] = {}
    for p in spec.params:
        if p.scope == "global":
            v = lookup(p, (sl.params, recipe.params), plan.name)
            if v is None:
                if p.required:
                    raise RecipeError(f"{spec.name}: parameter {p.name!r} has no value for "
                                      f"tensor {plan.name!r}; set it under parameters")
                v = p.default
            out[p.name] = v
        else:
            vals = []
            for m in inputs:
                v = lookup(p, (sl.source(m).params, sl.params, recipe.params), plan.inputs[m])
                if v is None:
                    if p.required:
                        raise RecipeError(f"{spec.name}: parameter {p.name!r} has no value for "
                                          f"source {m!r} at tensor {plan.inputs[m]!r}")
                    v = p.default
                vals.append(v)
            out[p.name] = vals
    return out


# --- disk merge -------------------------------------------------------------------------------
def _config_model(recipe) -> str:
    """The model whose config / tokenizer the output takes: the base, else the first source."""
    return recipe.base or recipe.slices[0].sources[0].model


def _out_config(recipe, sources, n_layers: int) -> dict | None:
    cfg = sources[_config_model(recipe)].config()
    if cfg is None:
        return None
    cfg = dict(cfg)
    for k in LAYER_COUNT_KEYS:
        if k in cfg:
            cfg[k] = n_layers
            break
    return cfg


def merge_slices_to_dir(recipe, outdir, force: bool = False, device=None,
                        progress: bool = True, max_shard_bytes: int | str = "2GB",
                        inputs=()) -> Path:
    """Merge a slices recipe (paths) into the HF directory ``outdir``, tensor by tensor
    (see the module docstring; same output files, atomicity and errors as
    :func:`wsviz.recipes.merge_to_dir`). Each tensor's inputs are cast to the compute dtype
    (the recipe's ``dtype``, else theirs promoted) and the result written as
    :func:`~wsviz.recipes.engine.merge_one` returns it; non-floating tensors are copied from
    the first source."""
    from wsviz.io import open_source
    from wsviz.io.outputs import check_output
    from wsviz.io.writer import HFDirWriter
    from wsviz.recipes.engine import compute_dtype, make_generator, merge_one

    recipe.validate()
    models = []
    for sl in recipe.slices:
        models += [s.model for s in sl.sources]
    if recipe.base:
        models.append(recipe.base)
    read = [*inputs, *models]  # never an output (see wsviz.io.outputs)
    out = check_output(outdir, read, force=force)
    sources = {m: open_source(m) for m in dict.fromkeys(models)}
    read += [p for src in sources.values() for p in src.files()]
    plans, n_layers = plan_slices(recipe, sources)
    plans.sort(key=lambda p: p.order_key)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    spec = recipe.spec
    gen = make_generator(recipe, dev)
    cfg = _out_config(recipe, sources, n_layers)
    ref_path = sources[_config_model(recipe)].path
    copy_from = ref_path if ref_path is not None and Path(ref_path).is_dir() else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plans), desc="merge", unit="tensor")
    with HFDirWriter(out, force=force, copy_from=copy_from,
                     max_shard_bytes=max_shard_bytes, inputs=read) as w:
        for plan in plans:
            sl = recipe.slices[plan.slice]
            base_m, inputs = slice_roles(spec, sl, recipe.base)
            first = sl.sources[0].model
            if not sources[first].info(plan.inputs[first]).dtype.is_floating_point:
                w.add(plan.name, sources[first].get(plan.inputs[first]))
            else:
                shapes = {m: tuple(sources[m].info(nm).shape) for m, nm in plan.inputs.items()}
                if len(set(shapes.values())) > 1:
                    raise RecipeError(f"slices[{plan.slice}]: the sources of {plan.name!r} "
                                      f"differ in shape: {shapes}")
                got = {m: sources[m].get(nm, device=dev) for m, nm in plan.inputs.items()}
                dt = compute_dtype(recipe, [x.dtype for x in got.values()])
                got = {m: x.to(dt) for m, x in got.items()}
                base = got[base_m] if base_m is not None else None
                x = torch.stack([got[m] for m in inputs])
                params = resolve_slice_params(recipe, plan, inputs)
                r = merge_one(recipe, plan.name, plan.t, base, x, generator=gen, params=params)
                w.add(plan.name, r)
            if bar is not None:
                bar.update(1)
        if cfg is not None:
            w.write_text("config.json", json.dumps(cfg, indent=2) + "\n")
        w.write_text("wsviz_recipe.json", recipe.to_json())
        if spec.in_mergekit:
            w.write_text("mergekit_config.yml", recipe.to_mergekit_yaml())
    if bar is not None:
        bar.close()
    return out
