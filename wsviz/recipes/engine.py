"""Per-tensor merge driver shared by the in-memory and the disk path.

dtype semantics (mergekit 0.1.5): a tensor's inputs are cast to the compute dtype — the
recipe's ``dtype``, or without one the inputs' dtypes promoted (``torch.promote_types``)
— and the method does all its arithmetic in it; the result is cast to ``out_dtype`` when
the recipe has one. :func:`merge_one` applies this for every registered method, so a
method's ``fn`` only ever sees inputs already in the compute dtype.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def dtype_name(dt: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``."""
    return str(dt).replace("torch.", "")


def compute_dtype(recipe, input_dtypes: Iterable[torch.dtype]) -> torch.dtype:
    """The dtype a tensor is merged in: ``recipe.dtype`` if set, else the floating
    ``input_dtypes`` promoted (bf16 + bf16 → bf16, bf16 + fp16 → fp32, bf16 + fp32 → fp32)."""
    if recipe.dtype:
        return torch_dtype(recipe.dtype)
    dt = None
    for d in input_dtypes:
        dt = d if dt is None else torch.promote_types(dt, d)
    return dt if dt is not None else torch.float32


def output_dtype(recipe, result: torch.dtype) -> torch.dtype:
    """``recipe.out_dtype`` if set, else the dtype of the method's result, which mergekit
    writes as it is: the compute dtype for almost every method, but float32 for
    ``arcee_fusion`` and ``ramplus_tl`` on bf16 / fp16 inputs (their float32 masks /
    factors promote the result)."""
    return torch_dtype(recipe.out_dtype) if recipe.out_dtype else result


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
    """Merge tensor ``name`` at layer position ``t``: casts ``base`` ``[*shape]`` and
    ``models`` ``[n, *shape]`` to the compute dtype (:func:`compute_dtype` over their
    dtypes), resolves the recipe's parameters (or takes ``params`` resolved by the caller,
    as the slices planner does), calls the method's ``fn`` and casts the result to
    ``out_dtype`` if the recipe has one (:func:`output_dtype`). With ``cache["deltas"]`` instead of ``models`` (the
    in-memory path) the cache must already hold the compute dtype.
    Errors from the method (e.g. DELLA's epsilon rule) become RecipeError naming the tensor.
    """
    spec = recipe.spec
    if params is None:
        params = recipe.resolve(name, t)
    ins = [x.dtype for x in (base, models) if x is not None]
    if models is None and cache is not None and "deltas" in cache:
        ins.append(cache["deltas"].dtype)
    dt = compute_dtype(recipe, ins)
    if base is not None and base.dtype != dt:
        base = base.to(dt)
    if models is not None and models.dtype != dt:
        models = models.to(dt)
    if models is None and cache is not None and cache.get("deltas") is not None \
            and cache["deltas"].dtype != dt:
        raise RecipeError(f"internal: cached deltas of {name!r} are {cache['deltas'].dtype}, "
                          f"the recipe computes in {dt}")
    try:
        r = spec.fn(base, models, params, generator=generator, cache=cache)
    except ValueError as e:
        raise RecipeError(f"{spec.name} failed on tensor {name!r}: {e}") from None
    return r.to(output_dtype(recipe, r.dtype))
