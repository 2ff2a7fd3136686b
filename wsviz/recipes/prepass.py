"""Whole-model pre-pass: statistics over every tensor of a merge before any tensor is merged.

Methods whose reference code works on the whole model flattened into one vector (PCB's and
ComPEFT's ``scope: model``, Fisher merging's normalisation) declare
``MethodSpec.model_stats``. Both merge engines call :func:`whole_model_stats` with a loader
that yields one tensor's inputs at a time (the disk engine reads the checkpoints, the
in-memory engine slices its cache), so memory stays bounded by one tensor plus the
statistic's histograms; the result reaches the method as ``cache["model_stats"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from wsviz.errors import RecipeError

Loader = Callable[[str, tuple[str, ...]], dict]
"""``load(name, inputs) -> {input: Tensor [n, *shape]}`` for one tensor (inputs: "deltas",
"fisher")."""


def stats_for(recipe, names: Sequence[str], positions: dict[str, float], n_models: int):
    """The method's :class:`~wsviz.compute.merge.whole_model.WholeModelStats` for ``recipe``
    (``None`` when the method or its settings need none). Raises :class:`RecipeError` when a
    parameter the statistic depends on varies between tensors (a gradient / filter schedule)."""
    spec = recipe.spec
    if spec.model_stats is None or not names:
        return None
    first = recipe.resolve(names[0], positions.get(names[0], 0.0))
    stats = spec.model_stats(n_models, first)
    if stats is None:
        return None
    for name in names[1:]:
        p = recipe.resolve(name, positions.get(name, 0.0))
        for key in stats.uses:
            if p[key] != first[key]:
                raise RecipeError(
                    f"{spec.name}: {key!r} varies between tensors ({first[key]!r} for "
                    f"{names[0]!r}, {p[key]!r} for {name!r}), but its whole-model statistics "
                    f"take one value; use one {key} or set scope: tensor")
    return stats


def whole_model_stats(recipe, names: Sequence[str], positions: dict[str, float],
                      n_models: int, load: Loader) -> dict | None:
    """Run the statistic's passes over ``names`` (each tensor loaded once per pass through
    ``load``) and return its result, or ``None`` when the recipe needs none."""
    stats = stats_for(recipe, names, positions, n_models)
    if stats is None:
        return None
    for p in range(stats.passes):
        for name in names:
            stats.update(p, load(name, stats.inputs))
        stats.end_pass(p)
    return stats.result()
