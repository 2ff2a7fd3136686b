"""What a merge method needs besides tensors (``MethodSpec.needs``), and the one check every
merge engine runs before merging: a recipe whose method needs an input it was not given is
refused with a :class:`RecipeError` that says what to give — never a silent fallback."""

from __future__ import annotations

from collections.abc import Collection

from wsviz.errors import RecipeError

#: how to provide each need, for the error message
HOW_TO_GIVE = {
    "fisher": (
        "each model's diagonal Fisher: compute one per model with `wsviz fisher MODEL --data "
        "FILE -o MODEL_fisher.safetensors` (or wsviz.compute.fisher.diagonal_fisher) and give "
        "them as extra: {fisher: {MODEL: FISHER_FILE, ...}} in the recipe (disk merges) or "
        "with InMemoryMerger.set_fisher({label: {name: Tensor}})"),
    "evaluator": (
        "an evaluator: run it through the search that uses one (e.g. wsviz.eval.greedy_soup "
        "or `wsviz soup`), not as a plain merge"),
}


def check_needs(recipe, provided: Collection[str], engine: str) -> None:
    """Raise :class:`RecipeError` when ``recipe``'s method needs an input not in ``provided``
    (the inputs ``engine`` — e.g. ``"merge_to_dir"`` — was given)."""
    spec = recipe.spec
    for need in spec.needs:
        if need not in provided:
            how = HOW_TO_GIVE.get(need, f"the input {need!r}")
            raise RecipeError(f"method {spec.name!r} needs {need!r} and {engine} was given "
                              f"none; give {how}")
