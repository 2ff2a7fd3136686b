"""Per-tensor merge driver shared by the in-memory and the disk path."""

from __future__ import annotations

import torch
from torch import Tensor

from wsviz.errors import RecipeError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` → ``torch.float32`` (RecipeError for unknown names)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise RecipeError(f"unknown dtype {name!r}; valid: {', '.join(_DTYPES)}") from None


def make_generator(recipe, device) -> torch.Generator | None:
    """A generator seeded with ``recipe.seed`` for random methods (None otherwise).

    With a seed, tensors must be merged in sorted-name order (as mergekit's scheduler
    does) for masks to equal ``mergekit-yaml --random-seed SEED`` on CPU.
    """
    if not recipe.spec.random:
        return None
    g = torch.Generator(device=torch.device(device) if device is not None else "cpu")
    if recipe.seed is not None:
        g.manual_seed(int(recipe.seed))
    else:
        g.seed()
    return g


def merge_one(recipe, name: str, t: float, base: Tensor | None, models: Tensor | None, *,
              generator=None, cache: dict | None = None, params: dict | None = None) -> Tensor:
    """Merge tensor ``name`` at layer position ``t``: resolves the recipe's parameters
    (or takes ``params`` resolved by the caller, as the slices planner does) and calls the
    method's ``fn``; ``models`` ``[n, *shape]`` (or ``cache["deltas"]``).
    Errors from the method (e.g. DELLA's epsilon rule) become RecipeError naming the tensor.
    """
    spec = recipe.spec
    if params is None:
        params = recipe.resolve(name, t)
    try:
        return spec.fn(base, models, params, generator=generator, cache=cache)
    except ValueError as e:
        raise RecipeError(f"{spec.name} failed on tensor {name!r}: {e}") from None
