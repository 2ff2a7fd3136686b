"""Pruning, defined once: the :class:`PruneRecipe`, the rule for which tensors are pruned,
the per-tensor mask, and a streaming writer. ``wsviz prune`` and the dashboard's prune tuner
both run this module, so they give bit-identical tensors.

**Recipe** (YAML / JSON, strict: unknown keys, wrong types, non-finite numbers and values out
of range are refused with one line naming the key and the fix)::

    method: magnitude          # magnitude | random | structured | wanda | nm
    sparsity: 0.5              # fraction pruned, in [0, 1] (not for nm)
    schedule: [{filter: mlp, value: 0.7}]   # optional per-layer sparsity (mergekit setting)
    scope: layer               # magnitude only: layer | row | global
    include: ["*.mlp.*"]       # optional globs replacing the default selection
    exclude: ["*.layers.0.*"]  # optional globs never pruned
    # random: seed (int >= 0); structured: dim (0 rows, 1 columns); nm: n, m (keep n of m);
    # wanda: calib (calibration file, .pt token ids or .txt)

``method: "2:4"`` (any ``N:M``) is short for ``method: nm, n: 2, m: 4``.

**Which tensors** (:func:`selected_names`): floating-point tensors with exactly 2 dims (weight
matrices). By default those whose name ends in ``weight`` and that are not embeddings, output
heads or norms (:func:`wsviz.io.parse_layer_name` kind ``embed`` / ``head`` / ``norm``);
biases and norms are 1-D and never candidates. ``include`` globs (``fnmatch`` on the full
tensor name) replace the default rule (they may select embeddings or heads); ``exclude`` globs
always win.

**Sparsity per tensor** (:meth:`PrunePlan.sparsity_of`): the ``schedule`` evaluated at the
tensor (mergekit semantics, :func:`wsviz.recipes.schedule.evaluate_setting`: a gradient is
interpolated over the block position ``t``, filter entries match substrings of the name);
where the schedule resolves to nothing (a filter list without a catch-all) ``sparsity``
applies, and with no ``sparsity`` either the tensor is left dense (0).

**Masks** (:mod:`wsviz.compute.masks`, computed in the tensor's stored dtype): magnitude
keeps the largest ``|w|`` of the tensor (``row``: of every output row; ``global``: one
threshold over all selected tensors, ties at it kept); random keeps a uniform subset drawn
from a CPU generator seeded with the CRC32 of ``seed`` and the tensor name (so one tensor's
mask does not depend on which others are pruned, and is the same on every device);
structured drops whole rows (``dim: 0``) or columns (``dim: 1``) of least L2 norm; wanda
keeps per output row the largest ``|W_ij|·||X_j||_2`` (input-feature norms from a
calibration run, :mod:`wsviz.recipes.calibration`, matched to tensor names by
:func:`norm_for`); nm keeps the ``n`` largest
``|w|`` of every ``m`` consecutive entries along the input dimension.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wsviz.errors import RecipeError, WsvizError

#: method -> one-line description (the UI shows it)
METHODS: dict[str, str] = {
    "magnitude": "keep the largest |w| of each layer (scope row: of each output row; "
                 "global: one threshold over all pruned layers)",
    "random": "keep a uniformly random subset (seeded per tensor)",
    "structured": "drop whole output rows (dim 0) or input columns (dim 1) of least L2 norm",
    "wanda": "keep the largest |w|·||x|| per output row (||x||: input-feature norms from a "
             "calibration batch run through the model)",
    "nm": "N:M semi-structured: keep the n largest |w| of every m along the input dim "
          "(2:4 runs on sparse tensor cores)",
}
SCOPES = ("layer", "row", "global")
#: keys every method accepts, and the extra keys of each method
COMMON_KEYS = ("method", "include", "exclude")
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "magnitude": ("sparsity", "schedule", "scope"),
    "random": ("sparsity", "schedule", "seed"),
    "structured": ("sparsity", "schedule", "dim"),
    "wanda": ("sparsity", "schedule", "calib"),
    "nm": ("n", "m"),
}
ALL_KEYS = COMMON_KEYS + ("sparsity", "schedule", "scope", "seed", "dim", "calib", "n", "m")
#: layer kinds (wsviz.io.layers) never pruned by default
DEFAULT_SKIP_KINDS = ("embed", "head", "norm")
_NM = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")
#: a prune recipe is a small text file
MAX_RECIPE_BYTES = 1 << 20

__all__ = ["METHODS", "PrunePlan", "PruneRecipe", "norm_for", "prune_to_dir",
           "selected_names", "write_pruned"]


def _number(v, key: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RecipeError(f"prune recipe: {key}={v!r} is not a number; give a value in "
                          f"[{lo:g}, {hi:g}]")
    f = float(v)
    if not math.isfinite(f) or not lo <= f <= hi:
        raise RecipeError(f"prune recipe: {key}={v!r} is outside [{lo:g}, {hi:g}]; give the "
                          "fraction of entries to prune")
    return f


def _int(v, key: str, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise RecipeError(f"prune recipe: {key}={v!r} is not an integer; give a whole "
                              f"number >= {lo}")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise RecipeError(f"prune recipe: {key}={v!r} must be {rng}")
    return v


def _globs(v, key: str) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(g, str) and g.strip()
                                                     for g in v):
        raise RecipeError(f"prune recipe: {key} must be a list of glob patterns such as "
                          f"['*.mlp.*'], got {v!r}")
    return [g.strip() for g in v]


def parse_method(method: str) -> tuple[str, int | None, int | None]:
    """``"magnitude"`` -> ``("magnitude", None, None)``; ``"2:4"`` -> ``("nm", 2, 4)``.
    RecipeError for an unknown method."""
    if not isinstance(method, str):
        raise RecipeError(f"prune recipe: method={method!r} is not a name; choose one of "
                          f"{', '.join(METHODS)} (or N:M such as 2:4)")
    m = _NM.fullmatch(method)
    if m:
        return "nm", int(m.group(1)), int(m.group(2))
    name = method.strip().lower()
    if name not in METHODS:
        raise RecipeError(f"prune recipe: unknown prune method {method!r}; choose one of "
                          f"{', '.join(METHODS)} (or N:M such as 2:4)")
    return name, None, None


@dataclass
class PruneRecipe:
    """What to prune and how (see the module docstring for every key). Construct it, then
    :meth:`validate` (done by :meth:`from_dict` and by :class:`PrunePlan`)."""

    method: str
    sparsity: float | None = None
    schedule: Any = None
    scope: str = "layer"
    seed: int = 0
    dim: int = 0
    n: int = 2
    m: int = 4
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    calib: str | None = None

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> PruneRecipe:
        """Check every field (RecipeError naming the key and the fix); returns ``self``."""
        from wsviz.recipes.schedule import check_setting_shape, setting_scalars

        method, n, m = parse_method(self.method)
        self.method = method
        if n is not None:
            self.n, self.m = n, m
        if method == "nm":
            if self.sparsity is not None or self.schedule is not None:
                raise RecipeError(f"prune recipe: nm ({self.n}:{self.m}) has a fixed sparsity "
                                  f"of 1 - n/m; drop sparsity/schedule")
            self.n = _int(self.n, "n", 1)
            self.m = _int(self.m, "m", 1)
            if self.n > self.m:
                raise RecipeError(f"prune recipe: nm keeps n={self.n} of every m={self.m}; "
                                  "n must be <= m")
        else:
            if self.sparsity is None and self.schedule is None:
                raise RecipeError(f"prune recipe: {method} needs sparsity (the fraction to "
                                  "prune, in [0, 1]) or a schedule")
            if self.sparsity is not None:
                self.sparsity = _number(self.sparsity, "sparsity", 0.0, 1.0)
            if self.schedule is not None:
                check_setting_shape(self.schedule, "prune recipe: schedule")
                if isinstance(self.schedule, (bool, str)) or any(
                        isinstance(v, (bool, str)) for v in setting_scalars(self.schedule)):
                    raise RecipeError("prune recipe: schedule values are sparsities (numbers "
                                      "in [0, 1]), e.g. [0.3, 0.7] or [{filter: mlp, value: "
                                      "0.7}]")
                for v in setting_scalars(self.schedule):
                    _number(v, "schedule value", 0.0, 1.0)
        if self.scope not in SCOPES:
            raise RecipeError(f"prune recipe: scope={self.scope!r}; choose one of "
                              f"{', '.join(SCOPES)}")
        if self.scope != "layer" and method != "magnitude":
            raise RecipeError(f"prune recipe: scope applies to magnitude only; drop it for "
                              f"{method}")
        if self.scope == "global" and (self.schedule is not None or self.sparsity is None):
            raise RecipeError("prune recipe: scope global uses one sparsity for the whole "
                              "model; give sparsity and drop schedule")
        self.seed = _int(self.seed, "seed", 0)
        self.dim = _int(self.dim, "dim", 0, 1)
        if self.dim != 0 and method != "structured":
            raise RecipeError(f"prune recipe: dim applies to structured only; drop it for "
                              f"{method}")
        if self.seed != 0 and method != "random":
            raise RecipeError(f"prune recipe: seed applies to random only; drop it for {method}")
        self.include = _globs(self.include, "include")
        self.exclude = _globs(self.exclude, "exclude") or []
        if self.calib is not None:
            if method != "wanda":
                raise RecipeError(f"prune recipe: calib applies to wanda only; drop it for "
                                  f"{method}")
            if not isinstance(self.calib, str) or not self.calib.strip():
                raise RecipeError("prune recipe: calib is a file path (.pt token ids or .txt)")
        return self

    # -- round trips ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain dict with the keys this method uses (defaults of other methods left out)."""
        d: dict[str, Any] = {"method": self.method}
        for k in METHOD_KEYS[self.method]:
            v = getattr(self, k)
            if k in ("sparsity", "schedule", "calib") and v is None:
                continue
            d[k] = json.loads(json.dumps(v))
        if self.include is not None:
            d["include"] = list(self.include)
        if self.exclude:
            d["exclude"] = list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> PruneRecipe:
        """Build and validate from a dict; unknown keys and keys of another method are
        refused (RecipeError naming the key)."""
        if not isinstance(d, Mapping):
            raise RecipeError(f"a prune recipe is a mapping with at least 'method', got "
                              f"{type(d).__name__}")
        if "method" not in d:
            raise RecipeError("prune recipe: 'method' is missing; add method: magnitude "
                              f"(or one of {', '.join(METHODS)})")
        method, n, _ = parse_method(d["method"])
        if n is not None and ("n" in d or "m" in d):
            raise RecipeError(f"prune recipe: method {d['method']!r} already sets n and m; "
                              "drop them (or write method: nm)")
        allowed = set(COMMON_KEYS) | set(METHOD_KEYS[method])
        for k in d:
            if k not in allowed:
                if method == "nm" and k in ("sparsity", "schedule"):
                    raise RecipeError("prune recipe: nm has a fixed sparsity of 1 - n/m; drop "
                                      f"{k}")
                if k in ALL_KEYS:
                    raise RecipeError(f"prune recipe: {k!r} does not apply to {method}; "
                                      "drop it")
                raise RecipeError(f"prune recipe: unknown key {k!r}; valid keys for {method}: "
                                  f"{', '.join(sorted(allowed))}")
        kw = {k: v for k, v in d.items()}
        return cls(**kw).validate()

    def to_yaml(self) -> str:
        import yaml

        return ("# wsviz prune recipe: wsviz prune MODEL --recipe THIS.yml -o OUT\n"
                + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_text(cls, text: str, where: str = "prune recipe") -> PruneRecipe:
        """Parse YAML (JSON is YAML) text; errors are prefixed with ``where``."""
        import yaml

        from wsviz.recipes.recipe import _check_size

        try:
            d = yaml.safe_load(text)
            _check_size(d)
            return cls.from_dict(d)
        except yaml.YAMLError as e:
            msg = str(e).replace("\n", " ")
            raise RecipeError(f"{where}: not valid YAML/JSON ({msg})") from None
        except RecipeError as e:
            raise RecipeError(f"{where}: {str(e).removeprefix('prune recipe: ')}") from None

    @classmethod
    def load(cls, path) -> PruneRecipe:
        """Read a ``.yml`` / ``.yaml`` / ``.json`` prune recipe (RecipeError naming it)."""
        p = Path(path)
        try:
            if not p.is_file():
                raise RecipeError(f"{p}: no such prune recipe file")
            if p.stat().st_size > MAX_RECIPE_BYTES:
                raise RecipeError(f"{p}: too large for a prune recipe; is this the right file?")
            text = p.read_bytes().decode("utf-8")
        except OSError as e:
            raise RecipeError(f"{p}: cannot read it ({e.strerror or e})") from None
        except UnicodeDecodeError:
            raise RecipeError(f"{p}: not UTF-8 text; save the recipe as UTF-8") from None
        return cls.from_text(text, str(p))

    def save(self, path, force: bool = False, inputs: Iterable = ()) -> Path:
        """Write the recipe atomically (``.json`` -> JSON, else YAML); refuses an existing
        file without ``force`` and any path that is or lies inside an input."""
        from wsviz.io.outputs import atomic_write, check_output

        p = check_output(path, inputs, force=force, kind="recipe")
        text = self.to_json() + "\n" if p.suffix.lower() == ".json" else self.to_yaml()
        return atomic_write(p, lambda t: t.write_text(text), force=force)

    def describe(self) -> str:
        """Short one-line summary, e.g. ``magnitude(sparsity=0.5)``."""
        d = self.to_dict()
        d.pop("method")
        return f"{self.method}({', '.join(f'{k}={v}' for k, v in d.items())})"


# -- which tensors ------------------------------------------------------------------------------
def default_prunable(name: str) -> bool:
    """The default rule for a 2-D floating tensor: its name ends in ``weight`` and it is not
    an embedding, output head or norm."""
    from wsviz.io import parse_layer_name

    ln = parse_layer_name(name)
    return ln.param.endswith("weight") and ln.kind not in DEFAULT_SKIP_KINDS


def selected_names(recipe: PruneRecipe, shapes: Mapping[str, tuple[tuple[int, ...],
                                                                  torch.dtype]]) -> list[str]:
    """Names (in the order of ``shapes``) that ``recipe`` prunes.

    ``shapes``: ``{name: (shape, dtype)}`` of every tensor of the model. Candidates are
    floating tensors with 2 dims; ``include`` globs replace the default rule
    (:func:`default_prunable`), ``exclude`` globs always win. Raises RecipeError when an
    include glob matches no tensor name at all (a typo), or, for nm, when a selected tensor's
    column count is not divisible by ``m`` (naming it and how to exclude it).
    """
    if recipe.include is not None:
        for g in recipe.include:
            if not any(fnmatch.fnmatchcase(n, g) for n in shapes):
                raise RecipeError(f"prune recipe: include glob {g!r} matches no tensor of the "
                                  "model; check the names with `wsviz info --tensors MODEL`")
    out = []
    for name, (shape, dtype) in shapes.items():
        if len(shape) != 2 or not dtype.is_floating_point:
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in recipe.exclude):
            continue
        if recipe.include is not None:
            if not any(fnmatch.fnmatchcase(name, g) for g in recipe.include):
                continue
        elif not default_prunable(name):
            continue
        if recipe.method == "nm" and shape[1] % recipe.m:
            raise RecipeError(f"prune recipe: nm {recipe.n}:{recipe.m} needs the columns of "
                              f"{name} {tuple(shape)} divisible by {recipe.m}; exclude it "
                              f"(exclude: ['{name}'])")
        out.append(name)
    return out


# -- Wanda calibration ----------------------------------------------------------------------------
def norm_for(name: str, norms: Mapping[str, Tensor]) -> Tensor | None:
    """The input-feature norms ``[in]`` of tensor ``name`` from ``norms`` (keyed by tensor
    names or by module names as ``named_modules()`` gives them): an exact match of the name
    or of the name without ``.weight``, else the one key equal to it up to a dotted prefix
    (``model.layers.0.mlp.up_proj`` vs ``layers.0.mlp.up_proj``). None when nothing matches;
    RecipeError when several keys match equally."""
    stem = name[: -len(".weight")] if name.endswith(".weight") else name
    for key in (name, stem):
        if key in norms:
            return norms[key]
    hits = []
    for k in norms:
        ks = k[: -len(".weight")] if k.endswith(".weight") else k
        if ks and (stem.endswith("." + ks) or ks.endswith("." + stem)):
            hits.append(k)
    if len(hits) > 1:
        raise RecipeError(f"wanda: calibration norms {hits[:3]} all match {name}; name the "
                          "modules as the checkpoint does")
    return norms[hits[0]] if hits else None


# -- the plan -------------------------------------------------------------------------------------
class PrunePlan:
    """``recipe`` applied to one model: which tensors, at which sparsity, and their masks.

    ``shapes``: ``{name: (shape, dtype)}`` of every tensor (the order is kept);
    ``norms``: Wanda input-feature norms (see :func:`norm_for`; required for wanda, every
    selected tensor must find its norm); ``load(name) -> Tensor``: reads a tensor (needed
    for ``scope: global``, which streams the selected tensors once for the threshold).
    Raises RecipeError / WsvizError naming the tensor and the fix.
    """

    def __init__(self, recipe: PruneRecipe, shapes: Mapping, *, norms=None,
                 load: Callable[[str], Tensor] | None = None):
        from wsviz.recipes.schedule import layer_positions

        self.recipe = recipe.validate()
        self.names = list(shapes)
        self.selected = selected_names(recipe, shapes)
        self._sel = set(self.selected)
        self.positions = layer_positions(self.names)
        self.norms: dict[str, Tensor] = {}
        if recipe.method == "wanda":
            if norms is None:
                raise WsvizError("wanda needs calibration data: give --calib FILE (.pt token "
                                 "ids or .txt) or use another method")
            for n in self.selected:
                v = norm_for(n, norms)
                if v is None:
                    raise WsvizError(f"wanda: no calibration activations reached {n}; exclude "
                                     f"it (exclude: ['{n}']) or use another method")
                self.norms[n] = v
        self.threshold = None
        if recipe.scope == "global":
            from wsviz.compute.masks import global_magnitude_threshold

            if load is None:
                raise WsvizError("magnitude scope global needs the model's tensors")
            sel = self.selected
            self.threshold = global_magnitude_threshold(lambda: (load(n) for n in sel),
                                                        recipe.sparsity)

    def sparsity_of(self, name: str) -> float | None:
        """Target sparsity of ``name`` (None: not pruned; nm: ``1 - n/m``)."""
        from wsviz.recipes.schedule import evaluate_setting

        if name not in self._sel:
            return None
        r = self.recipe
        if r.method == "nm":
            return 1.0 - r.n / r.m
        s = None
        if r.schedule is not None:
            s = evaluate_setting(r.schedule, name, self.positions.get(name, 0.0), float)
        if s is None:
            s = r.sparsity
        return 0.0 if s is None else float(s)

    def mask(self, name: str, w: Tensor) -> Tensor | None:
        """Bool keep-mask of tensor ``name`` (``w`` as stored, any device), or None when the
        tensor is not pruned. Shape: ``w.shape``."""
        from wsviz.compute import masks

        s = self.sparsity_of(name)
        if s is None:
            return None
        r = self.recipe
        if r.method == "nm":
            return masks.nm_mask(w, r.n, r.m)
        if r.method == "magnitude":
            return masks.magnitude_mask(w, s, scope=r.scope, threshold=self.threshold)
        if r.method == "random":
            g = torch.Generator().manual_seed(_tensor_seed(r.seed, name))
            score = torch.rand(w.shape, generator=g).to(w.device)
            return masks.topk_mask(score, masks.n_keep(w.numel(), s))
        if r.method == "structured":
            return masks.structured_mask(w, s, dim=r.dim)
        return masks.wanda_mask(w, self.norms[name].to(w.device), s)

    def apply(self, name: str, w: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(pruned w, mask)``; ``(w, None)`` when ``name`` is not pruned. The pruned tensor
        keeps ``w``'s dtype and device; pruned entries are exactly 0."""
        mask = self.mask(name, w)
        if mask is None:
            return w, None
        return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device)), mask


def _tensor_seed(seed: int, name: str) -> int:
    """Per-tensor seed of random masks: ``crc32("<seed>:<name>")`` (32 bits: torch's CPU
    generator keeps only the low 32 bits of a seed, so both parts are hashed together)."""
    return zlib.crc32(f"{int(seed)}:{name}".encode())


# -- writing ----------------------------------------------------------------------------------------
def write_pruned(plan: PrunePlan, get: Callable[[str], Tensor], out, *, force: bool = False,
                 copy_from=None, inputs: Iterable = (), device=None,
                 max_shard_bytes: int | str = "2GB", extra_files: Mapping[str, str] = (),
                 model: str | None = None, progress: Callable[[int, int], None] | None = None
                 ) -> tuple[Path, dict[str, float]]:
    """Stream every tensor of ``plan.names`` through ``plan`` into the HF directory ``out``.

    ``get(name)`` reads one tensor as stored; pruning runs on ``device``; at most one
    tensor (plus its mask) is held besides the current output shard. Writes
    ``wsviz_prune.yml`` (the recipe), ``wsviz_prune.json`` (model, recipe, achieved sparsity
    per pruned tensor) and ``extra_files`` ``{name: text}``, copies config/tokenizer files
    from ``copy_from`` and renames into place only when complete (:class:`HFDirWriter`:
    ``out`` may not be, contain or lie inside any of ``inputs``; an existing ``out`` needs
    ``force``). Returns ``(out, {tensor: achieved sparsity})``.
    """
    from wsviz.io.writer import HFDirWriter

    dev = torch.device(device) if device is not None else None
    report: dict[str, float] = {}
    total = len(plan.names)
    with HFDirWriter(out, force=force, copy_from=copy_from, max_shard_bytes=max_shard_bytes,
                     inputs=list(inputs)) as w:
        for i, name in enumerate(plan.names):
            t = get(name)
            if name in plan._sel:
                x = t.to(dev) if dev is not None else t
                x, mask = plan.apply(name, x)
                report[name] = round(1.0 - int(mask.sum()) / max(1, mask.numel()), 6)
                t = x
                del mask
            w.add(name, t)
            del t
            if progress is not None:
                progress(i + 1, total)
        w.write_text("wsviz_prune.yml", plan.recipe.to_yaml())
        w.write_text("wsviz_prune.json", json.dumps({
            "model": model, "recipe": plan.recipe.to_dict(), "achieved": report}, indent=2))
        for fname, text in dict(extra_files).items():
            w.write_text(fname, text)
    return Path(out), report


def source_shapes(src) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{name: (shape, dtype)}`` of a checkpoint source, tied aliases left out."""
    aliases = src.aliases()
    return {n: (tuple(i.shape), i.dtype) for n, i in src.infos().items() if n not in aliases}


def prune_to_dir(recipe: PruneRecipe, model, out, *, force: bool = False, device=None,
                 max_shard_bytes: int | str = "2GB", norms=None, inputs: Iterable = (),
                 progress: Callable[[int, int], None] | None = None
                 ) -> tuple[Path, dict[str, float]]:
    """Prune the checkpoint ``model`` (a path, or an opened
    :class:`~wsviz.io.source.CheckpointSource`) into the HF directory ``out``.

    ``norms``: Wanda input norms; when None and ``recipe.calib`` is set, they are computed
    with :func:`calibration_norms` on ``model`` (a path). ``inputs``: further paths read
    (the recipe file). See :func:`write_pruned` for what is written and the output rules.
    Raises RecipeError, CheckpointError, OutputError (one line each).
    """
    from wsviz.io import open_source
    from wsviz.io.outputs import check_output

    recipe.validate()
    src = model if hasattr(model, "infos") else open_source(model)
    path = Path(src.path) if src.path is not None else None
    inputs = [*inputs, recipe.calib, *src.files()]
    check_output(out, inputs, force=force)
    if recipe.method == "wanda" and norms is None:
        if recipe.calib is None:
            raise WsvizError("wanda needs calibration data: --calib FILE (.pt token ids or "
                             ".txt) or calib: in the recipe")
        if path is None:
            raise WsvizError("wanda with calib needs MODEL on disk (a transformers model dir)")
        from wsviz.recipes.calibration import calibration_norms

        norms = calibration_norms(path, recipe.calib, device)
    shapes = source_shapes(src)
    plan = PrunePlan(recipe, shapes, norms=norms, load=src.get)
    copy_from = path if path is not None and path.is_dir() else None
    return write_pruned(plan, src.get, out, force=force, copy_from=copy_from, inputs=inputs,
                        device=device, max_shard_bytes=max_shard_bytes,
                        model=str(path) if path is not None else src.label, progress=progress)
