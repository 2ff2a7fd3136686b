"""In-memory merges for interactive tuning: task vectors cached on the device once.

>>> merger = InMemoryMerger(modelset, device="cuda")
>>> merged = merger.merge(Recipe("ties", base="base", models=[...labels...], params=...))

Every call is a vectorised pass over the cached ``[n_models, *shape]`` task vectors (no
disk I/O, no Python loop over elements); magnitude ranks for TIES/breadcrumbs trimming
and DELLA row ranks are computed on first use and reused by every later call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wsviz.compute.merge import sparsify as sp
from wsviz.errors import RecipeError
from wsviz.recipes.engine import make_generator, merge_one
from wsviz.recipes.schedule import layer_positions

_LAZY = {"ranks": sp.magnitude_ranks, "asc_ranks": sp.ascending_ranks,
         "row_ranks": sp.row_ranks}
_COPY = ("fisher",)


class _SubsetCache(dict):
    """Per-call cache for a subset / reordering of the cached models: lazily computed
    pieces come from the full-set cache (computed once there) and are row-indexed."""

    def __init__(self, parent: dict, idx: Tensor, deltas: Tensor):
        super().__init__(deltas=deltas)
        self.parent, self.idx = parent, idx

    def __contains__(self, key):
        return dict.__contains__(self, key) or key in _LAZY or (
            key in _COPY and key in self.parent)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __getitem__(self, key):
        if not dict.__contains__(self, key) and key in self.parent and key in _COPY:
            self[key] = self.parent[key].index_select(0, self.idx)
        if not dict.__contains__(self, key) and key in _LAZY:
            if key not in self.parent:
                self.parent[key] = _LAZY[key](self.parent["deltas"])
            self[key] = self.parent[key].index_select(0, self.idx)
        return dict.__getitem__(self, key)


class InMemoryMerger:
    """Base + stacked task vectors of ``modelset`` cached on ``device`` in the compute dtype.

    ``names``: tensors to cache (default: every floating tensor of the set). Recipes given
    to :meth:`merge` refer to models by model-set label (``modelset.labels``; the base's
    label or ``"base"`` means the base itself, useful for ``linear``).

    dtype (as mergekit, see :mod:`wsviz.recipes.engine`): the cache is built from the
    checkpoints' stored tensors in the compute dtype of recipes without ``dtype`` (the
    inputs' dtypes promoted: bf16 checkpoints are cached and merged in bf16, deltas rounded
    as mergekit rounds them). A recipe with ``dtype`` gets a second cache in that dtype,
    built from the checkpoints on first use (one such extra cache is kept at a time).
    Memory: base + n task vectors per cached dtype, plus rank caches (int32, n per tensor)
    for magnitude-based methods once used.
    """

    def __init__(self, modelset, device=None, names: Sequence[str] | None = None):
        self.modelset = modelset
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        all_names = list(modelset.names)
        if names is None:
            names = [n for n in all_names if modelset.info(n).dtype.is_floating_point]
        else:
            known = set(all_names)
            missing = [n for n in names if n not in known]
            if missing:
                raise RecipeError(f"tensors not in the model set: {missing[:5]}")
        self.names = list(names)
        self.labels = list(modelset.labels)
        self._t = layer_positions(all_names)
        self._stores: dict[str, tuple[dict[str, Tensor], dict[str, dict]]] = {}
        self._base, self._cache = self._store(None)

    def _read(self, label: str | None, name: str) -> Tensor:
        """Tensor ``name`` of the base (``label=None``) or a model, as stored."""
        src = self.modelset.base if label is None else self.modelset.models[label]
        return src.get(name, device=self.device)

    def _store(self, dtype: str | None):
        """``(base, caches)`` for recipes computing in ``dtype`` (None: the inputs')."""
        key = dtype or "auto"
        if key in self._stores:
            return self._stores[key]
        for k in [k for k in self._stores if k != "auto"]:  # one extra dtype at a time
            del self._stores[k]
        from wsviz.recipes.engine import compute_dtype, torch_dtype

        fixed = torch_dtype(dtype) if dtype else None
        bases: dict[str, Tensor] = {}
        caches: dict[str, dict] = {}
        auto = self._stores.get("auto")
        for n in self.names:
            b = self._read(None, n)
            ms = [self._read(lab, n) for lab in self.labels]
            dt = fixed or compute_dtype(_Auto, [b.dtype] + [m.dtype for m in ms])
            b = b.to(dt)
            d = torch.empty((len(ms), *b.shape), dtype=dt, device=self.device)
            for i, m in enumerate(ms):
                torch.sub(m.to(dt), b, out=d[i])
            del ms
            bases[n] = b
            caches[n] = {"deltas": d}
            if auto is not None and "fisher" in auto[1][n]:
                caches[n]["fisher"] = auto[1][n]["fisher"]
        self._stores[key] = (bases, caches)
        return bases, caches

    @property
    def nbytes(self) -> int:
        """Bytes held on the device by the caches (all cached dtypes)."""
        tot = 0
        for bases, caches in self._stores.values():
            for n in self.names:
                tot += bases[n].numel() * bases[n].element_size()
                tot += sum(v.numel() * v.element_size() for v in caches[n].values())
        return tot

    def paths(self) -> dict[str, str]:
        """``{label: checkpoint path}`` for the base (as ``"base"`` and its label) and the
        models that came from disk: ``recipe.to_mergekit_yaml(paths=merger.paths())`` or
        ``merge_to_dir(recipe.with_paths(merger.paths()), OUT)`` export an in-memory recipe."""
        out = {}
        b = self.modelset.base
        if getattr(b, "path", None) is not None:
            out["base"] = str(b.path)
            out[b.label] = str(b.path)
        for lab, src in self.modelset.models.items():
            if getattr(src, "path", None) is not None:
                out[lab] = str(src.path)
        return out

    def base(self, name: str) -> Tensor:
        """Cached base tensor ``name`` in the default compute dtype (the inputs')."""
        return self._base[name]

    def deltas(self, name: str) -> Tensor:
        """Cached task vectors ``[n, *shape]`` of ``name`` in the default compute dtype."""
        return self._cache[name]["deltas"]

    def set_fisher(self, fishers) -> None:
        """Diagonal Fishers for the ``fisher`` method: ``{label: {name: Tensor[*shape]}}``
        (e.g. from :func:`wsviz.compute.merge.extra.diagonal_fisher`), cached on the device."""
        missing = [lab for lab in self.labels if lab not in fishers]
        if missing:
            raise RecipeError(f"no Fisher given for model(s) {missing}")
        for n in self.names:
            try:
                f = torch.stack([fishers[lab][n].to(self.device, torch.float32)
                                 for lab in self.labels])
            except KeyError:
                raise RecipeError(f"the Fishers lack tensor {n!r}") from None
            for _, caches in self._stores.values():
                caches[n]["fisher"] = f

    def _index(self, recipe) -> list[int]:
        base_labels = {"base", getattr(self.modelset.base, "label", "base")}
        idx = []
        for m in recipe.models:
            if m.model in self.labels:
                idx.append(self.labels.index(m.model))
            elif m.model in base_labels:
                idx.append(-1)
            else:
                raise RecipeError(f"model {m.model!r} is not in the model set; labels: "
                                  f"{self.labels}")
        return idx

    def merge(self, recipe, names: Sequence[str] | None = None,
              out_dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """Merged tensors ``{name: Tensor}`` for ``names`` (default: all cached), on the
        device, in the recipe's ``out_dtype`` / compute dtype (mergekit's output dtype), or
        cast to ``out_dtype`` when given. Random methods with ``recipe.seed`` walk the
        tensors in sorted-name order from one seeded generator (as mergekit does)."""
        recipe.validate()
        if recipe.slices is not None:
            raise RecipeError("a slices recipe changes the layer structure; merge it to disk "
                              "(wsviz merge RECIPE -o OUT, or merge_to_dir) instead of in memory")
        bases, caches = self._store(recipe.dtype)
        if "fisher" in recipe.spec.needs and "fisher" not in caches[self.names[0]]:
            raise RecipeError("the fisher method needs Fishers: call merger.set_fisher(...) "
                              "first (wsviz.compute.merge.extra.diagonal_fisher computes them)")
        names = self.names if names is None else list(names)
        idx = self._index(recipe)
        full = idx == list(range(len(self.labels)))
        idx_t = torch.tensor([max(i, 0) for i in idx], device=self.device)
        base_rows = (torch.tensor([i < 0 for i in idx], device=self.device)
                     if -1 in idx else None)
        gen = make_generator(recipe, self.device)
        out = {}
        order = sorted(names) if gen is not None else names
        for n in order:
            if n not in caches:
                raise RecipeError(f"tensor {n!r} is not cached by this merger")
            full_cache = caches[n]
            base = bases[n]
            if full:
                cache = full_cache
            else:
                d = full_cache["deltas"].index_select(0, idx_t)
                if base_rows is not None:
                    d[base_rows] = 0
                cache = _SubsetCache(full_cache, idx_t, d)
            if recipe.base is None and recipe.spec.optional_base:
                # the base is no input of this merge: hand over the models themselves
                r = merge_one(recipe, n, self._t.get(n, 0.0), None,
                              base.unsqueeze(0) + cache["deltas"], generator=gen)
            else:
                r = merge_one(recipe, n, self._t.get(n, 0.0), base, None, generator=gen,
                              cache=cache)
            if out_dtype is not None:
                r = r.to(out_dtype)
            out[n] = r
        if order is not names:
            out = {n: out[n] for n in names}
        return out

    def merge_state_dict(self, recipe) -> dict[str, Tensor]:
        """:meth:`merge` in the recipe's ``out_dtype`` / compute dtype (what
        :func:`~wsviz.recipes.merge_to_dir` writes)."""
        return self.merge(recipe)


class _Auto:
    """Stand-in recipe without ``dtype`` for :func:`~wsviz.recipes.engine.compute_dtype`."""

    dtype = None
