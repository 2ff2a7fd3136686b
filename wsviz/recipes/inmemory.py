"""In-memory merges for interactive tuning: task vectors cached on the device once.

>>> merger = InMemoryMerger(modelset, device="cuda")
>>> merged = merger.merge(Recipe("ties", base="base", models=[...labels...], params=...))

Every call is a vectorised pass over the cached ``[n_models, *shape]`` task vectors (no
disk I/O, no Python loop over elements); magnitude ranks for TIES/breadcrumbs trimming
and DELLA row ranks are computed on first use and reused by every later call. Methods with
whole-model statistics (PCB / ComPEFT ``scope: model``, Fisher normalisation) compute them
over every cached tensor once per setting (memoised).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wsviz.compute.merge import sparsify as sp
from wsviz.errors import RecipeError
from wsviz.recipes.engine import make_generator, merge_one
from wsviz.recipes.needs import check_needs
from wsviz.recipes.prepass import stats_for, whole_model_stats
from wsviz.recipes.schedule import layer_positions
from wsviz.textsafe import cap_list

_LAZY = {"ranks": sp.magnitude_ranks, "asc_ranks": sp.ascending_ranks,
         "row_ranks": sp.row_ranks}
_COPY = ("fisher",)


class _TensorCache(dict):
    """Cache of one tensor: ``deltas`` (always), lazily ``models`` — the model tensors
    themselves in the compute dtype, re-read from the checkpoints for methods that merge
    weights rather than task vectors (``base + deltas`` is not the model once the delta was
    rounded) — and what the methods add (ranks, Fishers)."""

    def __init__(self, deltas: Tensor, load_models):
        super().__init__(deltas=deltas)
        self._load = load_models

    def __contains__(self, key):
        return dict.__contains__(self, key) or key == "models"

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __getitem__(self, key):
        if key == "models" and not dict.__contains__(self, key):
            self[key] = self._load()
        return dict.__getitem__(self, key)


class _SubsetCache(dict):
    """Per-call cache for a subset / reordering of the cached models: lazily computed
    pieces come from the full-set cache (computed once there) and are row-indexed; rows of
    ``base_rows`` (the base used as a model) are the base itself."""

    def __init__(self, parent: dict, idx: Tensor, deltas: Tensor, base: Tensor,
                 base_rows: Tensor | None):
        super().__init__(deltas=deltas)
        self.parent, self.idx, self.base, self.base_rows = parent, idx, base, base_rows

    def __contains__(self, key):
        return dict.__contains__(self, key) or key in _LAZY or key == "models" or (
            key in _COPY and key in self.parent)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __getitem__(self, key):
        if not dict.__contains__(self, key) and key in self.parent and key in _COPY:
            self[key] = self.parent[key].index_select(0, self.idx)
        if not dict.__contains__(self, key) and key in _LAZY:
            if not dict.__contains__(self.parent, key):
                self.parent[key] = _LAZY[key](self.parent["deltas"])
            self[key] = self.parent[key].index_select(0, self.idx)
        if not dict.__contains__(self, key) and key == "models":
            m = self.parent["models"].index_select(0, self.idx)
            if self.base_rows is not None:
                m[self.base_rows] = self.base
            self[key] = m
        return dict.__getitem__(self, key)


class _SourceView:
    """``source[name]`` for a CheckpointSource (a Fisher file) — read on demand."""

    def __init__(self, src):
        self.src = src

    def __contains__(self, name):
        return name in self.src

    def __getitem__(self, name):
        return self.src.get(name)


class _WithStats(dict):
    """A tensor's full cache with one call's whole-model statistics on top: reads fall
    through to the cache, writes (rank caches) go to it; ``"model_stats"`` stays local."""

    def __init__(self, parent: dict, stats: dict):
        super().__init__()
        self.parent, self.stats = parent, stats

    def __contains__(self, key):
        return key == "model_stats" or key in self.parent

    def __getitem__(self, key):
        return self.stats if key == "model_stats" else self.parent[key]

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __setitem__(self, key, value):
        self.parent[key] = value


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
        self._stats: dict[tuple, dict] = {}  # whole-model statistics of recent recipes
        self._fisher_labels: set[str] = set()
        self._base, self._cache = self._store(None)

    def _read(self, label: str | None, name: str) -> Tensor:
        """Tensor ``name`` of the base (``label=None``) or a model, as stored."""
        return self.modelset.source(label, name).get(name, device=self.device)

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
            caches[n] = _TensorCache(d, self._models_loader(n, dt))
            if auto is not None and "fisher" in auto[1][n]:
                caches[n]["fisher"] = auto[1][n]["fisher"]
        self._stores[key] = (bases, caches)
        return bases, caches

    def _models_loader(self, name: str, dt: torch.dtype):
        def load():
            return torch.stack([self._read(lab, name).to(dt) for lab in self.labels])
        return load

    @property
    def nbytes(self) -> int:
        """Bytes held on the device by the caches (all cached dtypes)."""
        tot = 0
        for bases, caches in self._stores.values():
            for n in self.names:
                tot += bases[n].numel() * bases[n].element_size()
                tot += sum(v.numel() * v.element_size() for v in dict.values(caches[n]))
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

    def tensor_cache(self, name: str) -> dict:
        """The reusable cache of tensor ``name`` in the default compute dtype (``deltas`` of
        every model in set order; magnitude-rank tables once a merge computed them): pass it
        as ``cache`` to a sparsifier working on exactly those deltas to skip the sort."""
        return self._cache[name]

    def set_fisher(self, fishers) -> None:
        """Diagonal Fishers for the ``fisher`` method: ``{label: {name: Tensor[*shape]}}``
        (e.g. from :func:`wsviz.compute.fisher.diagonal_fisher`, or a Fisher checkpoint read
        with :func:`wsviz.io.open_source`), cached on the device in float32. Models without
        one may be left out; a recipe that merges them is then refused. RecipeError for an
        unknown label or a Fisher lacking a cached tensor."""
        unknown = [lab for lab in fishers if lab not in self.labels]
        if unknown:
            raise RecipeError(f"Fishers given for {unknown}, which are not models of this "
                              f"merger ({self.labels})")
        have = [lab for lab in self.labels if lab in fishers]
        for n in self.names:
            shape = self._base[n].shape
            rows = []
            for lab in self.labels:
                if lab not in fishers:
                    rows.append(torch.full(shape, float("nan"), device=self.device))
                    continue
                if n not in fishers[lab]:
                    raise RecipeError(f"the Fisher of {lab!r} lacks tensor {n!r}")
                rows.append(fishers[lab][n].to(self.device, torch.float32).reshape(shape))
            f = torch.stack(rows)
            for _, caches in self._stores.values():
                caches[n]["fisher"] = f
        self._fisher_labels = set(have)
        self._stats.clear()

    @property
    def fisher_labels(self) -> set[str]:
        """Labels of the models whose Fisher is cached (see :meth:`set_fisher`)."""
        return set(self._fisher_labels)

    def fisher(self, label: str) -> dict[str, Tensor]:
        """The cached Fisher of model ``label``: ``{name: Tensor}`` (RecipeError if none)."""
        if label not in self._fisher_labels:
            raise RecipeError(f"no Fisher cached for model {label!r}")
        i = self.labels.index(label)
        return {n: self._cache[n]["fisher"][i] for n in self.names}

    def _fishers_for(self, recipe) -> set[str]:
        """Load Fishers named by ``recipe.extra["fisher"]`` (``{model: file}``) when the
        merger has none for the recipe's models; returns the labels that have one."""
        want = [m for m in recipe.labels if m in self.labels]
        have = self._fisher_labels
        spec = recipe.extra.get("fisher") if isinstance(recipe.extra, dict) else None
        if isinstance(spec, dict) and any(m not in have for m in want):
            from wsviz.io import open_source

            srcs = {m: open_source(spec[m]) for m in want if m in spec}
            given = {m: _SourceView(src) for m, src in srcs.items()}
            for lab in have:  # keep the Fishers already set
                given.setdefault(lab, self.fisher(lab))
            self.set_fisher(given)
            have = self._fisher_labels
        return have

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
        have = self._fishers_for(recipe) if "fisher" in recipe.spec.needs else set()
        check_needs(recipe, {"fisher"} if have else (), "this InMemoryMerger")
        lacking = [m for m in recipe.labels if have and m in self.labels and m not in have]
        if lacking:
            raise RecipeError(f"no Fisher for model(s) {lacking}: give one per merged model "
                              "(merger.set_fisher or the recipe's extra.fisher)")
        bases, caches = self._store(recipe.dtype)
        names = self.names if names is None else list(names)
        idx = self._index(recipe)
        rebase = self._rebase(recipe)
        if rebase is not None:
            return self._merge_rebased(recipe, names, idx, rebase, bases, caches, out_dtype)
        full = idx == list(range(len(self.labels)))
        idx_t = torch.tensor([max(i, 0) for i in idx], device=self.device)
        base_rows = (torch.tensor([i < 0 for i in idx], device=self.device)
                     if -1 in idx else None)
        stats = self._model_stats(recipe, caches, idx, idx_t, full, base_rows)
        gen = make_generator(recipe, self.device)
        out = {}
        order = sorted(names) if gen is not None else names
        for n in order:
            if n not in caches:
                raise RecipeError(f"tensor {n!r} is not cached by this merger")
            full_cache = caches[n]
            base = bases[n]
            if full:
                cache = full_cache if stats is None else _WithStats(full_cache, stats)
            else:
                d = full_cache["deltas"].index_select(0, idx_t)
                if base_rows is not None:
                    d[base_rows] = 0
                cache = _SubsetCache(full_cache, idx_t, d, base, base_rows)
                if stats is not None:
                    cache["model_stats"] = stats
            if recipe.base is None and recipe.spec.optional_base:
                # the base is no input of this merge: hand over the models themselves
                # (exact, loaded on demand; base + deltas is not them once rounded)
                r = merge_one(recipe, n, self._t.get(n, 0.0), None, cache["models"],
                              generator=gen)
            else:
                r = merge_one(recipe, n, self._t.get(n, 0.0), base, None, generator=gen,
                              cache=cache)
            if out_dtype is not None:
                r = r.to(out_dtype)
            out[n] = r
        if order is not names:
            out = {n: out[n] for n in names}
        return out

    def _rebase(self, recipe) -> int | None:
        """Index of the model ``recipe.base`` names when that is not the model set's base
        (None: the set's base, or no base). ``recipe.base`` may be a label or a checkpoint
        path; RecipeError when it names nothing in the set."""
        b = recipe.base
        if b is None or b in ("base", getattr(self.modelset.base, "label", "base")):
            return None
        if b in self.labels:
            return self.labels.index(b)
        import os

        want = os.path.realpath(os.path.expanduser(str(b)))
        for lab, p in self.paths().items():
            if os.path.realpath(p) == want:
                return None if lab in ("base", self.modelset.base.label) else \
                    self.labels.index(lab)
        raise RecipeError(f"base {b!r} is not in the model set: name 'base' or one of its "
                          f"models ({cap_list(self.labels)})")

    def _merge_rebased(self, recipe, names, idx, rebase, bases, caches, out_dtype):
        """mergekit's semantics for a recipe whose base is model ``rebase`` of the set: that
        model's tensors are the base, every task vector is taken against it (``m - ft``, in
        the compute dtype, as mergekit computes it — not re-based cached deltas)."""
        if stats_for(recipe, self.names, self._t, len(idx)) is not None or recipe.spec.needs:
            raise RecipeError(f"{recipe.method} with base {recipe.base!r} (a model, not the "
                              "model set's base) is not merged in memory; merge it to disk "
                              "(wsviz merge / merge_to_dir) or open a model set with that base")
        gen = make_generator(recipe, self.device)
        order = sorted(names) if gen is not None else list(names)
        out = {}
        for n in order:
            if n not in caches:
                raise RecipeError(f"tensor {n!r} is not cached by this merger")
            stack = caches[n]["models"]  # [n_models, *shape], compute dtype
            rows = [stack[i] if i >= 0 else bases[n] for i in idx]
            models = torch.stack(rows) if rows else None
            r = merge_one(recipe, n, self._t.get(n, 0.0), stack[rebase], models, generator=gen)
            out[n] = r if out_dtype is None else r.to(out_dtype)
        return {n: out[n] for n in names}

    def _model_stats(self, recipe, caches, idx, idx_t, full, base_rows) -> dict | None:
        """Whole-model statistics of ``recipe`` over every cached tensor (memoised per method,
        compute dtype, model selection and the parameters they depend on); None when it
        needs none."""
        st = stats_for(recipe, self.names, self._t, len(idx))
        if st is None:
            return None
        first = recipe.resolve(self.names[0], self._t.get(self.names[0], 0.0))
        key = (recipe.method, recipe.dtype, tuple(idx), type(st).__name__,
               tuple(repr(first[k]) for k in st.uses))
        if key in self._stats:
            return self._stats[key]

        def load(name, inputs):
            c = caches[name]
            out = {}
            if "deltas" in inputs:
                d = c["deltas"] if full else c["deltas"].index_select(0, idx_t)
                if base_rows is not None:
                    d[base_rows] = 0
                out["deltas"] = d
            if "fisher" in inputs:
                out["fisher"] = c["fisher"] if full else c["fisher"].index_select(0, idx_t)
            return out

        result = whole_model_stats(recipe, self.names, self._t, len(idx), load)
        if len(self._stats) >= 16:
            self._stats.pop(next(iter(self._stats)))
        self._stats[key] = result
        return result

    def merge_state_dict(self, recipe) -> dict[str, Tensor]:
        """:meth:`merge` in the recipe's ``out_dtype`` / compute dtype (what
        :func:`~wsviz.recipes.merge_to_dir` writes)."""
        return self.merge(recipe)


class _Auto:
    """Stand-in recipe without ``dtype`` for :func:`~wsviz.recipes.engine.compute_dtype`."""

    dtype = None
