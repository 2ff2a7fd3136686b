"""Checkpoint reading: lazy per-tensor sources, model sets, layer-name parsing."""

from __future__ import annotations

from wsviz.io.layers import GROUP_OF, KINDS, LayerName, parse_layer_name
from wsviz.io.modelset import AlignmentReport, ModelSet
from wsviz.io.open import open_source
from wsviz.io.source import CheckpointSource, TensorInfo

__all__ = [
    "GROUP_OF",
    "KINDS",
    "AlignmentReport",
    "CheckpointSource",
    "LayerName",
    "ModelSet",
    "TensorInfo",
    "open_source",
    "parse_layer_name",
]
