"""``passthrough`` (mergekit 0.1.5): copy one model's tensor, optionally scaled.

On its own it copies a model; its use is with ``slices:`` (see
:mod:`wsviz.recipes.slices`), where each output layer range comes from one source model's
layer range (frankenmerges: the output may have more or fewer layers than the inputs).
"""

from __future__ import annotations

from torch import Tensor

from wsviz.compute.merge._util import as_list, get_models
from wsviz.compute.merge.spec import MethodSpec, ParamSpec, register


def merge_passthrough(base, models, params, *, generator=None, cache=None) -> Tensor:
    """The single model of ``models`` ``[1, *shape]``, times ``scale`` when it is set
    (``None``: unchanged)."""
    x = get_models(base, models, cache)[0]
    scale = as_list(params.get("scale"), 1)[0]
    return x if scale is None else x * float(scale)


PASSTHROUGH = register(MethodSpec(
    name="passthrough",
    params=(ParamSpec("scale", float, None, "model",
                      "multiply the tensor by this (unset: copy unchanged)",
                      ui_range=(0.0, 2.0)),),
    needs_base=False, min_models=1, max_models=1, in_mergekit=True, fn=merge_passthrough,
    doc="copy one model's tensors (optionally scaled); with slices: stack layer ranges of "
        "several models (frankenmerge)",
    reference="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
))
