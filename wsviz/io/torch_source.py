"""Lazy reader for pickled PyTorch state dicts (``.bin`` / ``.pt`` / ``.pth``).

Always ``torch.load(..., weights_only=True)``: the restricted unpickler refuses any
object other than tensors and plain containers *without executing it*. Zip-format files
are memory-mapped (``mmap=True``), so listing and reading one tensor does not pull the
others into memory.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from wsviz.errors import CheckpointError
from wsviz.io.memory import StateDictSource, check_state_dict
from wsviz.io.source import file_fingerprint, open_regular

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "params")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\\\)?")


def refusal_reason(text: str, limit: int = 200) -> str:
    """The sentence of torch's ``weights_only`` refusal that names what was blocked (e.g.
    ``Trying to load unsupported GLOBAL posix.system whose module posix is blocked``), without
    ANSI codes and whole (a sentence too long is cut at a word, marked with …); torch's
    advice to retry with ``weights_only=False`` is never repeated."""
    clean = _ANSI.sub("", text)
    lines = [ln.strip() for ln in clean.splitlines() if ln.strip()]
    keys = ("unsupported global", "unsupported operand", "blocked", "unpickling", "global")
    pick = next((ln for k in keys for ln in lines if k in ln.lower()
                 and "weights_only" not in ln), None)
    if pick is None:
        return "the unpickler met an object that is not a tensor"
    pick = re.split(r"(?<=[.!?])\s", pick)[0].rstrip(".")  # its first sentence, whole
    if len(pick) > limit:
        pick = pick[:pick.rfind(" ", 0, limit)].rstrip(" ,;:") + " …"
    return pick


def load_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a pickled state dict safely (weights_only, mmap when the format allows).

    A top-level ``{"state_dict": {...}}`` style wrapper is unwrapped. Raises
    :class:`CheckpointError` naming the file when it is unreadable, holds non-tensor
    objects, or is not a mapping of names to tensors.
    """
    try:
        with open_regular(path, "PyTorch checkpoint"):  # never a FIFO: it would block
            pass
        mmap = zipfile.is_zipfile(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to unpickle: it holds objects other than tensors "
            f"({refusal_reason(str(e))}). wsviz never executes pickled code; re-save the "
            "weights with torch.save(model.state_dict(), ...) or as .safetensors"
        ) from None
    except Exception as e:  # noqa: BLE001 - any failure of a foreign file is a user error
        raise CheckpointError(
            f"{path}: cannot read as a PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e)[:160]}); the file is corrupt, truncated or not a state dict"
        ) from None
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, not a state dict (name -> tensor); "
            "save model.state_dict() instead"
        )
    return check_state_dict(obj, str(path))


class TorchFileSource(StateDictSource):
    """One pickled state-dict file, loaded with ``weights_only=True`` (and mmap)."""

    def __init__(self, path: str | Path, label: str | None = None):
        self.path = Path(path)
        self.label = label or self.path.stem
        self._set_tensors(load_torch_state_dict(self.path))

    def _fingerprint_parts(self) -> list[bytes]:
        return [file_fingerprint(self.path)]
