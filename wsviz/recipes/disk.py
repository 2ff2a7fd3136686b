"""Streaming disk-to-disk merge: one tensor at a time, bounded memory, atomic output."""

from __future__ import annotations

from pathlib import Path

import torch

from wsviz.errors import RecipeError
from wsviz.recipes.engine import make_generator, merge_one, torch_dtype
from wsviz.recipes.schedule import layer_positions


def _open_set(recipe):
    """A ModelSet for the recipe's paths: base + models (linear without base: the first
    model serves as the alignment reference)."""
    from wsviz.io import ModelSet

    paths = recipe.labels
    ref = recipe.base if recipe.base else paths[0]
    labels = [f"m{i}" for i in range(len(paths))]
    return ModelSet.open(ref, paths, labels=labels), labels


def _fishers(recipe):
    """Sources of the diagonal Fishers named by ``recipe.extra["fisher"]``
    (``{model path: fisher checkpoint path}``, same tensor names as the models)."""
    from wsviz.io import open_source

    spec = recipe.extra.get("fisher")
    if not isinstance(spec, dict) or any(m not in spec for m in recipe.labels):
        raise RecipeError("the fisher method needs extra: {fisher: {MODEL: FISHER_FILE}} for "
                          "every model (safetensors with the models' tensor names)")
    return [open_source(spec[m]) for m in recipe.labels]


def merge_to_dir(recipe, outdir, force: bool = False, device=None, progress: bool = True,
                 max_shard_bytes: int | str = "2GB", inputs=()) -> Path:
    """Merge the checkpoints named by ``recipe`` (paths) into the HF directory ``outdir``.

    Streams per tensor (sorted by name, as mergekit walks them): reads that tensor from
    each input, merges on ``device``, queues it for the current output shard. Peak memory
    ≈ one shard + (n + 2) copies of the largest tensor. Non-floating tensors are copied
    from the base. Writes ``wsviz_recipe.json`` (and ``mergekit_config.yml`` when the
    method exists in mergekit) beside the weights, copies config/tokenizer files from the
    base, and renames into place only when complete (see :class:`HFDirWriter`).

    ``outdir`` may not be, contain or lie inside any input (the recipe's models, Fisher
    files, the extra ``inputs`` such as the recipe file), checked on resolved paths.

    Raises RecipeError (invalid recipe), AlignmentError (models do not align),
    CheckpointError (unreadable input), OutputError (``outdir`` exists without ``force``,
    is or holds an input, disk full).
    """
    from wsviz.io.outputs import check_output
    from wsviz.io.writer import HFDirWriter

    recipe.validate()
    fisher_paths = list((recipe.extra.get("fisher") or {}).values()) if isinstance(
        recipe.extra.get("fisher"), dict) else []
    inputs = [*inputs, recipe.base, *recipe.labels, *fisher_paths]
    out = check_output(outdir, inputs, force=force)
    ms, labels = _open_set(recipe)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    out_dt = torch_dtype(recipe.out_dtype or recipe.dtype)
    names = sorted(ms.names)
    tpos = layer_positions(ms.names)
    gen = make_generator(recipe, dev)
    fisher = _fishers(recipe) if "fisher" in recipe.spec.needs else None
    base_dir = ms.base.path if ms.base.path is not None and Path(ms.base.path).is_dir() else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names), desc="merge", unit="tensor")

    def load(name):
        """Inputs of one tensor (run one tensor ahead in a reader thread)."""
        if not ms.info(name).dtype.is_floating_point:
            return ms.base.get(name), None, None, None
        base = ms.get_base(name, device=dev) if recipe.base else None
        models = torch.stack([ms.get(lab, name, device=dev) for lab in labels])
        cache = None
        if fisher is not None:
            cache = {"fisher": torch.stack([f.get(name, device=dev) for f in fisher])}
        return None, base, models, cache

    from concurrent.futures import ThreadPoolExecutor

    inputs += ms.files() + [p for f in fisher or [] for p in f.files()]
    with HFDirWriter(out, force=force, copy_from=base_dir, max_shard_bytes=max_shard_bytes,
                     inputs=inputs) as w, ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(load, names[0]) if names else None
        for i, name in enumerate(names):
            copied, base, models, cache = nxt.result()
            nxt = pool.submit(load, names[i + 1]) if i + 1 < len(names) else None
            if copied is not None:
                w.add(name, copied)
            else:
                r = merge_one(recipe, name, tpos.get(name, 0.0), base, models, generator=gen,
                              cache=cache)
                w.add(name, r.to(out_dt))
                del base, models, r, cache
            if bar is not None:
                bar.update(1)
        w.write_text("wsviz_recipe.json", recipe.to_json())
        if recipe.spec.in_mergekit:
            try:
                w.write_text("mergekit_config.yml", recipe.to_mergekit_yaml())
            except RecipeError:
                pass
    if bar is not None:
        bar.close()
    return out
