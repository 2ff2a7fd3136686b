"""Wanda calibration for the demo zoo: input-feature norms of the zoo's Llama on its own
training images (the zoo owns the model, so it owns the wrapper that runs it)."""

from __future__ import annotations

from torch import nn

from wsviz.compute.masks import collect_input_norms
from wsviz.recipes.calibration import load_weights

__all__ = ["Features", "zoo_input_norms"]


class Features(nn.Module):
    """``m.features(x)`` as a module's forward (hooks then see every linear layer of the
    classifier's trunk under ``m.<name>``); ``x``: token ids ``[batch, 17]``."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m.features(x)


def zoo_input_norms(zoo, target: str, weights=None) -> dict:
    """Wanda calibration for the demo zoo: input-feature norms of every linear layer of the
    Llama ``target`` (a task or "base"; with ``weights``, the base architecture holding those
    tensors, e.g. the current merge) on the zoo's (tokenised) training images
    (:func:`wsviz.compute.masks.collect_input_norms` on :class:`wsviz.zoo.ZooClassifier`)."""
    from wsviz.zoo.data import load_digits_split
    from wsviz.zoo.model import ZooClassifier

    model = ZooClassifier.from_pretrained(zoo.base_dir if target == "base" or weights is not None
                                          else zoo.task_dirs[target])
    load_weights(model, weights)

    cfg = zoo.manifest["config"]
    x = load_digits_split(cfg["n_train"], cfg["split_seed"]).x_train
    norms = collect_input_norms(Features(model), x)
    return {f"{k.removeprefix('m.')}.weight": v for k, v in norms.items()}


