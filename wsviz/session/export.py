"""The workspace's export job: recipes as mergekit YAML / JSON with checkpoint paths, and
merged or pruned HF directories written inside the export root (never over a served
model)."""

from __future__ import annotations

import copy
from pathlib import Path

from wsviz.errors import RecipeError, WsvizError
from wsviz.session.views import MERGE_TARGET, Progress


class ExportMixin:
    """Export methods of :class:`~wsviz.session.ApiWorkspace`."""

    def write_pruned(self, target: str, method: str, params: dict, outdir: str, force: bool,
                     merge=None, progress: Progress | None = None) -> str:
        """Write the pruned ``target`` to the HF directory ``outdir`` inside
        :attr:`export_root` (same rules as :meth:`write_merged`), with ``wsviz_prune.yml``
        beside the weights (and, for the current merge, its ``wsviz_recipe.json`` with
        checkpoint paths): ``wsviz merge`` + ``wsviz prune --recipe`` reproduce it."""
        from wsviz.io.outputs import check_output, resolve_under
        from wsviz.recipes.prune import prune_to_dir

        recipe = self.prune_recipe(method, params)
        target = self._check_target(target, merge)
        out = resolve_under(self.export_root, str(outdir))
        check_output(out, self.input_files(), force=force,
                     hint="tick 'overwrite' to replace it or choose another name")

        def step(i, total):
            if progress:
                progress(0.1 + 0.9 * i / max(1, total), f"{i}/{total}")

        if progress:
            progress(0.05, "pruning")
        norms = self._wanda_norms(target, merge) if recipe.method == "wanda" else None
        try:
            if target == MERGE_TARGET:
                path, _ = self.write_merge_pruned(merge, recipe, out, force=force,
                                                  progress=step)
            else:
                src = self.ms.base if target == "base" else self.ms.models[target]
                path, _ = prune_to_dir(recipe, src, out, force=force, device=self.device,
                                       norms=norms, inputs=self.input_files(), progress=step)
        except OSError as exc:
            raise WsvizError(f"cannot write {out}: {exc.strerror or exc}") from None
        if progress:
            progress(1.0, "done")
        return str(path)

    def write_merge_pruned(self, merge, recipe, out, *, force: bool = False,
                           progress=None, max_shard_bytes: int | str = "2GB",
                           model: str = "current merge", inputs=()):
        """The merge -> prune -> write pipeline: merge ``merge`` in memory (cached), prune it
        with the :class:`~wsviz.recipes.prune.PruneRecipe` ``recipe`` and stream it into the
        HF directory ``out`` (:func:`wsviz.recipes.prune.write_pruned`: atomic, never over
        an input), config files copied from the base directory, ``wsviz_recipe.json`` (the
        merge with checkpoint paths) and ``wsviz_prune.yml`` beside the weights.
        ``progress(i, total)`` per tensor; ``inputs``: further paths read (recipe files).
        Returns ``(path, {tensor: sparsity})``. ``wsviz merge --prune`` runs this too."""
        from wsviz.recipes.prune import write_pruned

        plan, get = self._prune_plan(MERGE_TARGET, recipe, merge)
        base_dir = self.ms.base.path
        base_dir = base_dir if base_dir is not None and Path(base_dir).is_dir() else None
        return write_pruned(
            plan, get, out, force=force, copy_from=base_dir,
            inputs=[*self.input_files(), *inputs], device=self.device, progress=progress,
            model=model, max_shard_bytes=max_shard_bytes,
            extra_files={"wsviz_recipe.json": self.recipe_json(merge)})

    # -- export -----------------------------------------------------------------------------
    def _paths(self) -> dict[str, str]:
        paths = {}
        if self.ms.base.path is not None:
            paths[self.base_label] = str(self.ms.base.path)
        for lab, src in self.ms.models.items():
            if src.path is not None:
                paths[lab] = str(src.path)
        from wsviz.recipes.portable import absolute_paths

        return absolute_paths(paths)  # exports work from any directory (issue 19)

    def _path_recipe(self, recipe):
        """Copy of ``recipe`` with model-set labels replaced by checkpoint paths."""
        paths = self._paths()
        r = copy.deepcopy(recipe)
        missing = [x for x in [r.base, *r.labels] if x and x not in paths]
        if missing:
            raise WsvizError(f"models {missing} were not loaded from disk, so they cannot be "
                             "named in an exported recipe")
        if r.base:
            r.base = paths[r.base]
        for m in r.models:
            m.model = paths[m.model]
        return r

    def recipe_yaml(self, recipe):
        try:
            text = recipe.to_mergekit_yaml(paths=self._paths())
        except RecipeError as exc:
            return None, str(exc)
        return text, None

    def recipe_json(self, recipe) -> str:
        try:
            return self._path_recipe(recipe).to_json()
        except WsvizError:
            return recipe.to_json()

    def input_files(self) -> list[Path]:
        """Every path the served model set reads (never an export target)."""
        return self.ms.files()

    def write_merged(self, recipe, outdir: str, force: bool, progress: Progress | None = None
                     ) -> str:
        """Merge ``recipe`` to the HF directory ``outdir``, which must lie inside
        :attr:`export_root` (a relative name is taken inside it) and may not be, contain or
        lie inside a served model (:func:`wsviz.io.outputs.check_output`)."""
        from wsviz.io.outputs import check_output, resolve_under
        from wsviz.recipes import merge_to_dir

        out = resolve_under(self.export_root, str(outdir))
        check_output(out, self.input_files(), force=force,
                     hint="tick 'overwrite' to replace it or choose another name")
        if progress:
            progress(0.05, "merging")
        disk_recipe = self._path_recipe(recipe)
        if "fisher" in recipe.spec.needs:  # the Fishers go beside the output, named by it
            disk_recipe.extra["fisher"] = self._save_fishers(recipe, out.with_name(
                out.name + "-fisher"))
        try:
            path = merge_to_dir(disk_recipe, out, force=force,
                                device=self.device, progress=False)
        except OSError as exc:
            raise WsvizError(f"cannot write {out}: {exc.strerror or exc}") from None
        if progress:
            progress(1.0, "done")
        return str(path)


    def _save_fishers(self, recipe, fdir: Path) -> dict[str, str]:
        """Write the Fishers of ``recipe``'s models to ``fdir`` (one safetensors each) and
        return ``{checkpoint path: Fisher file}`` for the disk recipe."""
        from safetensors.torch import save_file

        with self._eval_lock:
            self._ensure_fishers(recipe)
        fdir.mkdir(parents=True, exist_ok=True)
        paths = self._paths()
        out = {}
        for lab in recipe.labels:
            f = fdir / f"{lab}.safetensors"
            save_file({k: v.detach().cpu().contiguous()
                       for k, v in self.merger().fisher(lab).items()}, str(f))
            out[paths[lab]] = str(f)
        return out


