"""The merge -> prune -> write pipeline outside the dashboard (``wsviz merge --prune``): a
session over the checkpoints a disk recipe names runs exactly the code the dashboard's
"prune the current merge" export runs (:meth:`ApiWorkspace.write_merge_pruned`)."""

from __future__ import annotations

from pathlib import Path

from wsviz.errors import RecipeError
from wsviz.session.workspace import ApiWorkspace

__all__ = ["merge_prune_to_dir", "recipe_session"]


def recipe_session(recipe, device=None, calib: str | None = None):
    """``(workspace, label_recipe)``: an :class:`ApiWorkspace` over the checkpoints of the
    disk ``recipe`` (base labelled ``"base"``, each model by its path; a recipe without a base
    uses its first model as the model set's base) and ``recipe`` rewritten to those labels.
    ``calib``: Wanda calibration file (``.pt`` token ids or ``.txt``). RecipeError for what
    an in-memory merge cannot run (slices, Fisher inputs)."""
    from functools import partial

    from wsviz.io import ModelSet

    if recipe.slices is not None:
        raise RecipeError("--prune merges in memory, which 'slices:' recipes cannot; merge "
                          "with `wsviz merge`, then prune the output with `wsviz prune`")
    if recipe.spec.needs:
        raise RecipeError(f"--prune merges in memory without the {', '.join(recipe.spec.needs)} "
                          f"inputs {recipe.method!r} needs; merge with `wsviz merge`, then "
                          "prune the output with `wsviz prune`")
    base = recipe.base or recipe.labels[0]
    models = [m for m in recipe.labels if m != base]
    ms = ModelSet.open(base, models, labels=models)
    norms = None
    if calib is not None:
        from wsviz.recipes.calibration import hf_input_norms

        paths = {"base": str(base), **{m: str(m) for m in models}}
        norms = partial(hf_input_norms, paths, str(calib), device)
    ws = ApiWorkspace(ms, None, title=Path(str(base)).name, device=device, input_norms=norms)
    ws.calib = str(calib) if calib is not None else None
    return ws, recipe.with_paths({base: "base"})


def merge_prune_to_dir(recipe, prune, out, *, force: bool = False, device=None,
                       max_shard_bytes: int | str = "2GB", inputs=(), progress=None):
    """Merge the disk ``recipe`` in memory, prune the result with the
    :class:`~wsviz.recipes.prune.PruneRecipe` ``prune`` (Wanda: calibrated on the merge with
    ``prune.calib``) and write the HF directory ``out`` atomically, with
    ``wsviz_recipe.json`` and ``wsviz_prune.yml`` beside the weights. Memory: every input
    model is held (the in-memory merger). Returns ``(path, {tensor: sparsity})``; raises
    RecipeError / CheckpointError / OutputError (one line each)."""
    ws, merge = recipe_session(recipe, device=device, calib=prune.calib)
    return ws.write_merge_pruned(merge.validate(), prune, out, force=force, progress=progress,
                                 max_shard_bytes=max_shard_bytes, model="merge",
                                 inputs=[p for p in inputs if p])
