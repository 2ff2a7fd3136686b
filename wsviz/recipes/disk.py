"""Streaming disk-to-disk merge: one tensor at a time, bounded memory, atomic output."""

from __future__ import annotations

from pathlib import Path

import torch

from wsviz.errors import RecipeError
from wsviz.recipes.engine import compute_dtype, make_generator, merge_one
from wsviz.recipes.needs import check_needs
from wsviz.recipes.schedule import layer_positions


def _open_set(recipe):
    """A ModelSet for the recipe's paths: base + models (linear without base: the first
    model serves as the alignment reference)."""
    from wsviz.io import ModelSet

    paths = recipe.labels
    ref = recipe.base if recipe.base else paths[0]
    labels = [f"m{i}" for i in range(len(paths))]
    return ModelSet.open(ref, paths, labels=labels, dtype=None), labels


def _fishers(recipe):
    """Sources of the diagonal Fishers named by ``recipe.extra["fisher"]``
    (``{model path: fisher checkpoint path}``, same tensor names as the models)."""
    from wsviz.io import open_source

    spec = recipe.extra.get("fisher")
    if not isinstance(spec, dict) or any(m not in spec for m in recipe.labels):
        raise RecipeError("the fisher method needs extra: {fisher: {MODEL: FISHER_FILE}} for "
                          "every model (safetensors with the models' tensor names)")
    return [open_source(spec[m]) for m in recipe.labels]


def _prepass(recipe, ms, labels, names, tpos, dev, fisher):
    """Whole-model statistics for methods that need them (``scope: model``), streamed from
    disk one tensor at a time (see :mod:`wsviz.recipes.prepass`); None otherwise."""
    from wsviz.compute.merge._util import get_deltas
    from wsviz.recipes.prepass import whole_model_stats

    def load(name, inputs):
        out = {}
        if "deltas" in inputs:  # as the merge below reads them: stored, then compute dtype
            base = ms.get_base(name, device=dev)
            raw = [ms.get(lab, name, device=dev) for lab in labels]
            dt = compute_dtype(recipe, [base.dtype] + [x.dtype for x in raw])
            models = torch.stack([x.to(dt) for x in raw])
            out["deltas"] = get_deltas(base.to(dt), models, None)
        if "fisher" in inputs:
            out["fisher"] = torch.stack([f.get(name, device=dev) for f in fisher])
        return out

    floats = [n for n in names if ms.info(n).dtype.is_floating_point]
    return whole_model_stats(recipe, floats, tpos, len(labels), load)


def merge_to_dir(recipe, outdir, force: bool = False, device=None, progress: bool = True,
                 max_shard_bytes: int | str = "2GB", inputs=()) -> Path:
    """Merge the checkpoints named by ``recipe`` (paths) into the HF directory ``outdir``.

    Streams per tensor (sorted by name, as mergekit walks them): reads that tensor from
    each input in its stored dtype, casts to the compute dtype (``recipe.dtype``, else the
    inputs' dtypes promoted, as mergekit does), merges on ``device``, casts to
    ``recipe.out_dtype`` if set and queues it for the current output shard; ``config.json``
    (copied from the base) states the dtype written. Peak memory
    ≈ one shard + (n + 2) copies of the largest tensor. Non-floating tensors are copied
    from the base. Writes ``wsviz_recipe.json`` (and ``mergekit_config.yml`` when the
    method exists in mergekit) beside the weights, copies config/tokenizer files from the
    base, and renames into place only when complete (see :class:`HFDirWriter`). Methods
    with whole-model statistics (PCB / ComPEFT ``scope: model``, Fisher normalisation) first
    stream every tensor once per statistic pass (:mod:`wsviz.recipes.prepass`).

    A recipe with ``slices`` goes to :func:`wsviz.recipes.slices.merge_slices_to_dir`.

    ``outdir`` may not be, contain or lie inside any input (the recipe's models, Fisher
    files, the extra ``inputs`` such as the recipe file), checked on resolved paths.

    Raises RecipeError (invalid recipe, a needed input such as Fishers not given),
    AlignmentError (models do not align), CheckpointError (unreadable input), OutputError
    (``outdir`` exists without ``force``, is or holds an input, disk full).
    """
    from wsviz.io.outputs import check_output
    from wsviz.io.writer import HFDirWriter

    if recipe.slices is not None:  # layer ranges (frankenmerges): their own planner
        from wsviz.recipes.slices import merge_slices_to_dir

        return merge_slices_to_dir(recipe, outdir, force=force, device=device,
                                   progress=progress, max_shard_bytes=max_shard_bytes,
                                   inputs=inputs)
    recipe.validate()
    inputs = [*inputs, recipe.base, *recipe.labels, *_fisher_paths(recipe)]
    out = check_output(outdir, inputs, force=force)
    ms, labels = _open_set(recipe)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    names = sorted(ms.names)
    tpos = layer_positions(ms.names)
    gen = make_generator(recipe, dev)
    check_needs(recipe, {"fisher"} if recipe.extra.get("fisher") else (), "merge_to_dir")
    fisher = _fishers(recipe) if "fisher" in recipe.spec.needs else None
    stats = _prepass(recipe, ms, labels, names, tpos, dev, fisher)
    load = _tensor_inputs(recipe, ms, labels, dev, fisher, stats)
    base_dir = ms.base.path if ms.base.path is not None and Path(ms.base.path).is_dir() else None
    inputs += ms.files() + [p for f in fisher or [] for p in f.files()]
    with HFDirWriter(out, force=force, copy_from=base_dir, max_shard_bytes=max_shard_bytes,
                     inputs=inputs) as w:
        _stream_merge(w, names, load, progress, lambda name, base, models, cache: merge_one(
            recipe, name, tpos.get(name, 0.0), base, models, generator=gen, cache=cache))
        _write_recipe_docs(w, recipe)
    return out


def _fisher_paths(recipe) -> list:
    """The Fisher files a recipe names (``extra.fisher``: label -> path), else ``[]``."""
    fisher = recipe.extra.get("fisher")
    return list(fisher.values()) if isinstance(fisher, dict) else []


def _tensor_inputs(recipe, ms, labels, dev, fisher, stats):
    """``load(name) -> (copied, base, models, cache)``: a non-floating tensor is ``copied``
    from the base (the rest None); else ``base`` ``[*shape]`` (None without a base) and
    ``models`` ``[n, *shape]`` in the compute dtype on ``dev``, and the method's ``cache``
    (stacked Fishers ``[n, *shape]``, whole-model statistics) or None."""

    def load(name):
        if not ms.info(name).dtype.is_floating_point:
            return ms.base.get(name), None, None, None
        base = ms.get_base(name, device=dev) if recipe.base else None
        raw = [ms.get(lab, name, device=dev) for lab in labels]  # stored dtypes
        dt = compute_dtype(recipe, [x.dtype for x in ([base] if base is not None else []) + raw])
        models = torch.stack([x.to(dt) for x in raw])
        del raw
        if base is not None:
            base = base.to(dt)
        cache = None
        if fisher is not None:
            cache = {"fisher": torch.stack([f.get(name, device=dev) for f in fisher])}
        if stats is not None:
            cache = {**(cache or {}), "model_stats": stats}
        return None, base, models, cache

    return load


def _stream_merge(w, names: list[str], load, progress: bool, merge) -> None:
    """Add every tensor of ``names`` (in order) to the writer ``w``: its inputs are read one
    tensor ahead in a reader thread (``load``), floating ones merged by
    ``merge(name, base, models, cache)``; a tqdm bar when ``progress``."""
    from concurrent.futures import ThreadPoolExecutor

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names), desc="merge", unit="tensor")
    try:
        with ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(load, names[0]) if names else None
            for i, name in enumerate(names):
                copied, base, models, cache = nxt.result()
                nxt = pool.submit(load, names[i + 1]) if i + 1 < len(names) else None
                if copied is not None:
                    w.add(name, copied)
                else:
                    r = merge(name, base, models, cache)
                    w.add(name, r)
                    del base, models, r, cache
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _write_recipe_docs(w, recipe) -> None:
    """``wsviz_recipe.json`` and, when mergekit has the method, ``mergekit_config.yml``."""
    w.write_text("wsviz_recipe.json", recipe.to_json())
    if recipe.spec.in_mergekit:
        try:
            w.write_text("mergekit_config.yml", recipe.to_mergekit_yaml())
        except RecipeError:
            pass
