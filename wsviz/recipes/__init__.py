"""Recipes: the :class:`Recipe` model, mergekit YAML / JSON in and out, and the merge
engines (:class:`InMemoryMerger` for interactive tuning, :func:`merge_to_dir` streaming to
an HF directory), and pruning (:class:`PruneRecipe`, :func:`prune_to_dir`)."""

from __future__ import annotations

from wsviz.recipes.disk import merge_to_dir
from wsviz.recipes.inmemory import InMemoryMerger
from wsviz.recipes.prune import PrunePlan, PruneRecipe, prune_to_dir
from wsviz.recipes.recipe import ModelEntry, Recipe
from wsviz.recipes.schedule import evaluate_setting, layer_positions, resolve_params
from wsviz.recipes.soup import greedy_soup

__all__ = ["InMemoryMerger", "ModelEntry", "PrunePlan", "PruneRecipe", "Recipe",
           "evaluate_setting", "layer_positions", "greedy_soup", "merge_to_dir", "prune_to_dir",
           "resolve_params"]
