"""The recipe + evaluator arguments shared by ``wsviz evaluate`` and ``wsviz search``."""

from __future__ import annotations

from wsviz.errors import WsvizError


def recipe_and_models(recipe_path: str | None, eval_spec: str | None, eval_help: str):
    """``(recipe, base, labels)`` of a recipe file evaluated with ``--eval``: the
    :class:`~wsviz.recipes.Recipe` loaded from ``recipe_path``, the base checkpoint
    (``recipe.base``, else its first model) and its model paths. WsvizError (one line) when
    the file or the evaluator spec (``eval_help`` lists the accepted forms) is missing."""
    from wsviz.recipes import Recipe

    if not recipe_path:
        raise WsvizError("give a RECIPE file (or --demo)")
    if not eval_spec:
        raise WsvizError(f"give an evaluator with --eval SPEC ({eval_help})")
    recipe = Recipe.load(recipe_path)
    labels = recipe.labels
    return recipe, recipe.base or labels[0], labels
