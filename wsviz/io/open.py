"""``open_source``: one entry point from whatever the user has to a CheckpointSource."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from wsviz.errors import CheckpointError
from wsviz.io.hf_dir import HFDirSource
from wsviz.io.memory import StateDictSource
from wsviz.io.peft_adapter import LoraDeltaSource, LoraFinetunedSource, is_peft_adapter_dir
from wsviz.io.safetensors_source import SafetensorsFileSource
from wsviz.io.source import CheckpointSource
from wsviz.io.torch_source import TorchFileSource

TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def open_source(
    obj, base: CheckpointSource | None = None, label: str | None = None
) -> CheckpointSource:
    """Open a checkpoint lazily.

    ``obj`` is a path (HF model dir, PEFT LoRA adapter dir, ``.safetensors``, ``.bin``,
    ``.pt``, ``.pth``), a ``torch.nn.Module``, a ``dict[str, Tensor]`` or already a
    :class:`CheckpointSource`. An adapter dir opens as the fine-tuned view
    ``base + ΔW`` when ``base`` is given, else as its deltas only.
    Raises :class:`CheckpointError` naming the path when it does not exist or holds
    no readable weights.
    """
    if isinstance(obj, CheckpointSource):
        return obj
    if isinstance(obj, (torch.nn.Module, dict)):
        return StateDictSource(obj, label=label)
    if not isinstance(obj, (str, Path)):
        raise CheckpointError(
            f"cannot open a {type(obj).__name__} as a checkpoint; pass a path, an nn.Module "
            "or a dict of tensors"
        )
    path = Path(obj).expanduser()
    try:
        return _open_path(path, base, label)
    except OSError as e:  # unreadable, symlink loop, vanished while opening, ...
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
        raise CheckpointError(
            f"{path}: cannot read it{where}: {e.strerror or e}; check that it exists, is "
            "readable and is not a symlink loop") from None


def _open_path(path: Path, base, label) -> CheckpointSource:
    try:
        os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file or directory") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open it ({e.strerror or e}); check that it is "
                              "readable and not a symlink loop") from None
    if path.is_dir():
        if is_peft_adapter_dir(path):
            if base is not None:
                return LoraFinetunedSource(path, base, label=label)
            return LoraDeltaSource(path, label=label)
        return HFDirSource(path, label=label)
    if path.suffix == ".safetensors":
        return SafetensorsFileSource(path, label=label)
    if path.suffix in TORCH_SUFFIXES:
        return TorchFileSource(path, label=label)
    raise CheckpointError(
        f"{path}: unknown checkpoint format {path.suffix!r}; expected a model directory, "
        f".safetensors, {', '.join(TORCH_SUFFIXES)}"
    )
