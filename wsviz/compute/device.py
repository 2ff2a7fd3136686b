"""Which torch device a ``device=`` argument means (shared by the CLI, analysis, merging)."""

from __future__ import annotations

import torch

from wsviz.errors import WsvizError


def resolve_device(device=None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available else CPU; otherwise ``torch.device(device)``.

    Raises :class:`WsvizError` naming the value for an unknown or unavailable device.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise WsvizError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise WsvizError(f"device {device!r} requested but CUDA is not available; use "
                             "--device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise WsvizError(f"device {device!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s); use cuda:0.."
                             f"cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                    and torch.backends.mps.is_available()):
        raise WsvizError(f"device {device!r} requested but MPS is not available; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise WsvizError(f"device {device!r} is not supported by wsviz; use cpu, cuda or cuda:N")
    return dev
