"""The zoo's network: an MLP encoder on 8x8 digits plus one linear head per task.

Tensor names (as saved in every zoo directory)::

    encoder.layers.0.weight [hidden, 64]     encoder.layers.0.bias [hidden]
    encoder.layers.1.weight [features, hidden]  encoder.layers.1.bias [features]
    head.weight [n_classes, features]        head.bias [n_classes]   (task dirs only)

``features(x) = relu(W1 relu(W0 (x - input_mean) + b0) + b1)``; ``logits = head(features)``.
Task vectors are the deltas of the ``encoder.`` tensors; the heads are frozen linear probes
fitted on the pre-trained encoder and differ in shape between tasks, so they are not merged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from wsviz.errors import EvalError

ENCODER_PREFIX = "encoder."
HEAD_PREFIX = "head."
MODEL_TYPE = "wsviz-digits-mlp"


def encoder_names(n_layers: int = 2) -> list[str]:
    """Names of the encoder tensors (the ones task vectors, merges and evaluators use)."""
    return [f"{ENCODER_PREFIX}layers.{i}.{p}" for i in range(n_layers) for p in ("weight", "bias")]


def encode(
    weights: Mapping[str, torch.Tensor], x: torch.Tensor, input_mean: torch.Tensor,
    n_layers: int = 2,
) -> torch.Tensor:
    """Encoder forward pass, ``x [n, 64] -> features [n, features]`` (ReLU after each layer).

    ``weights`` maps :func:`encoder_names` to tensors; other keys are ignored.
    Raises :class:`wsviz.errors.EvalError` naming a missing tensor.
    """
    h = x - input_mean
    for i in range(n_layers):
        try:
            w = weights[f"{ENCODER_PREFIX}layers.{i}.weight"]
            b = weights[f"{ENCODER_PREFIX}layers.{i}.bias"]
        except KeyError as e:
            raise EvalError(
                f"zoo encoder weights lack tensor {e.args[0]!r}; pass all of "
                f"{encoder_names(n_layers)} (got {len(weights)} tensors)"
            ) from None
        h = torch.relu(torch.addmm(b, h, w.t()))
    return h


class ZooClassifier(nn.Module):
    """The encoder + one task head as an ``nn.Module`` (for users who want a plain model).

    ``ZooClassifier.from_pretrained(task_dir)`` loads a zoo task directory;
    ``forward(x [n, 64]) -> logits [n, n_classes]`` (apply the task's input transform first).
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        dims = [64, config["hidden_size"], config["feature_size"]]
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.register_buffer("input_mean", torch.tensor(config["input_mean"], dtype=torch.float32),
                             persistent=False)
        n_classes = config.get("num_labels")
        self.head = nn.Linear(dims[-1], n_classes) if n_classes else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``x [n, 64]`` (pixels / 16) -> ``[n, feature_size]``."""
        h = x - self.input_mean
        for layer in self.encoder.layers:
            h = torch.relu(layer(h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return f if self.head is None else self.head(f)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ZooClassifier:
        """Load a zoo directory (``config.json`` + ``model.safetensors``)."""
        from safetensors.torch import load_file

        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        model = cls(config)
        model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        return model.eval()
