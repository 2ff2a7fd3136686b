"""In-memory sources: a ``torch.nn.Module`` or a ``dict[str, Tensor]`` state dict."""

from __future__ import annotations

import torch

from wsviz.errors import CheckpointError
from wsviz.io.source import CheckpointSource, TensorInfo, tensor_bytes_fingerprint


class StateDictSource(CheckpointSource):
    """Tensors held in memory. Tied parameters (shared storage) are reported as aliases."""

    def __init__(self, obj: torch.nn.Module | dict, label: str | None = None):
        if isinstance(obj, torch.nn.Module):
            sd = obj.state_dict(keep_vars=False)
            label = label or type(obj).__name__
        elif isinstance(obj, dict):
            sd = obj
            label = label or "state_dict"
        else:
            raise CheckpointError(
                f"cannot read a {type(obj).__name__} as a checkpoint; pass a path, an "
                "nn.Module or a dict of tensors"
            )
        check_state_dict(sd, f"<{label}>")
        self.label = label
        self.path = None
        self._set_tensors(sd)

    def _set_tensors(self, sd: dict) -> None:
        """Hold ``sd`` (name -> tensor), index its metadata and its tied (shared) tensors."""
        self._sd = {str(k): v.detach() for k, v in sd.items()}
        self._infos = {n: TensorInfo(n, tuple(t.shape), t.dtype) for n, t in self._sd.items()}
        self._aliases = shared_storage_aliases(self._sd)

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def aliases(self) -> dict[str, str]:
        return self._aliases

    def _read(self, name: str) -> torch.Tensor:
        return self._sd[name].to("cpu").clone()

    def _fingerprint_parts(self) -> list[bytes]:
        return [tensor_bytes_fingerprint(t) for t in self._sd.values()]


def check_state_dict(sd: dict, where: str) -> dict[str, torch.Tensor]:
    """``sd`` with ``str`` keys when every value is a tensor; else :class:`CheckpointError`
    naming ``where`` (a path or ``<label>``), the first bad entry and its type."""
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{where}: entry {bad[0]!r} is a {type(sd[bad[0]]).__name__}, not a tensor; "
            "save a plain state dict (name -> tensor)"
        )
    return {str(k): v for k, v in sd.items()}


def shared_storage_aliases(sd: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{alias: first_name}`` for tensors that are views of the same data (tied weights)."""
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for name, t in sd.items():
        if t.numel() == 0 or t.device.type == "meta":
            continue
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
    return aliases
