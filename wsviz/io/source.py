"""The one interface every checkpoint format is read through.

A :class:`CheckpointSource` lists tensor names, shapes and dtypes without reading data,
returns one tensor at a time with :meth:`CheckpointSource.get`, and offers a content
fingerprint usable as a cache key. Implementations never load a whole model to answer
for one tensor.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from wsviz.errors import CheckpointError, NonFiniteError, WsvizError


@dataclass(frozen=True)
class TensorInfo:
    """Metadata of one stored tensor: ``shape`` (tuple of ints) and storage ``dtype``."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_size(self.dtype)


def dtype_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


class CheckpointSource(ABC):
    """A read-only, lazily read collection of named tensors.

    Subclasses implement :meth:`infos`, :meth:`_read` and :meth:`_fingerprint_parts`.
    ``label`` is a short human name (the file or directory name by default);
    ``path`` is the file or directory it came from (``None`` for in-memory sources).
    """

    label: str
    path: Path | None = None

    # -- listing ---------------------------------------------------------------------------
    @abstractmethod
    def infos(self) -> dict[str, TensorInfo]:
        """``{name: TensorInfo}`` for every tensor, in storage order; reads no tensor data."""

    def names(self) -> list[str]:
        """Tensor names in storage order."""
        return list(self.infos())

    def info(self, name: str) -> TensorInfo:
        """Metadata of tensor ``name``; raises :class:`WsvizError` naming it if absent."""
        infos = self.infos()
        if name not in infos:
            raise WsvizError(
                f"{self.where()}: no tensor named {name!r} "
                f"({len(infos)} tensors; e.g. {', '.join(list(infos)[:3])})"
            )
        return infos[name]

    def __contains__(self, name: str) -> bool:
        return name in self.infos()

    def __len__(self) -> int:
        return len(self.infos())

    def num_params(self) -> int:
        """Total number of elements over all tensors, tied aliases counted once."""
        aliases = self.aliases()
        return sum(i.numel for n, i in self.infos().items() if n not in aliases)

    def aliases(self) -> dict[str, str]:
        """``{alias: canonical}`` for tied / shared tensors (e.g. a tied ``lm_head.weight``)."""
        return {}

    def config(self) -> dict | None:
        """The model's ``config.json`` as a dict when the source has one."""
        return None

    def files(self) -> list[Path]:
        """Every path this source reads (its file or directory and, for directories, the
        weight files in it, which may be symlinks elsewhere); an output may be none of
        these nor contain or lie inside one (see :mod:`wsviz.io.outputs`)."""
        return [self.path] if self.path is not None else []

    def where(self) -> str:
        """Human-readable location used in error messages."""
        return str(self.path) if self.path is not None else f"<{self.label}>"

    # -- reading ---------------------------------------------------------------------------
    @abstractmethod
    def _read(self, name: str) -> torch.Tensor:
        """Read tensor ``name`` (on CPU, storage dtype). ``name`` is known to exist."""

    def get(
        self,
        name: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        check_finite: bool = True,
    ) -> torch.Tensor:
        """Return tensor ``name`` (shape as stored) on ``device`` as ``dtype``.

        Only this tensor's bytes are read. Raises :class:`WsvizError` if ``name`` is
        absent and :class:`NonFiniteError` (naming file and tensor) if it holds NaN/Inf
        and ``check_finite``.
        """
        aliases = self.aliases()
        canonical = aliases.get(name, name)
        self.info(canonical)
        try:
            t = self._read(canonical)
        except OSError as e:
            raise CheckpointError(
                f"{self.where()}: cannot read tensor {name!r} ({e.strerror or e}); check that "
                "the file is readable and was not moved or truncated") from None
        if check_finite and t.is_floating_point() and not _sum_is_finite(t):
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise NonFiniteError(
                    f"{self.where()}: tensor {name!r} holds {bad} NaN/Inf value(s) of "
                    f"{t.numel()}; fix or drop this checkpoint (wsviz does not propagate them)"
                )
        if dtype is not None or device is not None:
            t = t.to(device=device, dtype=dtype)
        return t

    def state_dict(self, device=None, dtype=None) -> dict[str, torch.Tensor]:
        """Every tensor, read one by one (use only for small models)."""
        return {n: self.get(n, device=device, dtype=dtype) for n in self.names()}

    # -- identity --------------------------------------------------------------------------
    @abstractmethod
    def _fingerprint_parts(self) -> list[bytes]:
        """Byte strings that identify the content (see :meth:`fingerprint`)."""

    def fingerprint(self) -> str:
        """Hex digest identifying the content: names, shapes, dtypes and every byte of the
        files read (:func:`wsviz.io.filehash.file_digest`: a full SHA-256, remembered by
        file identity so an unchanged file is not hashed twice). Any edit changes it.
        Raises :class:`CheckpointError` when a file cannot be read."""
        if getattr(self, "_fp", None) is None:
            h = hashlib.sha256()
            for name, i in self.infos().items():
                h.update(f"{name}|{i.shape}|{i.dtype}\n".encode())
            for part in self._fingerprint_parts():
                h.update(part)
            self._fp = h.hexdigest()[:32]
        return self._fp

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where()}, {len(self)} tensors)"


def _sum_is_finite(t: torch.Tensor) -> bool:
    """Cheap screen: any NaN/Inf makes the sum non-finite (an overflowing sum of finite
    values is a false alarm that the exact ``isfinite`` check then clears)."""
    return bool(torch.isfinite(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else None)))


def file_fingerprint(path: Path) -> bytes:
    """Hash of every byte of one file, remembered by file identity
    (:func:`wsviz.io.filehash.file_digest`): any edit changes it."""
    from wsviz.io.filehash import file_digest

    return file_digest(path)


def tensor_bytes_fingerprint(t: torch.Tensor) -> bytes:
    """Hash of a tensor's values (contiguous CPU bytes)."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return hashlib.sha256(t.numpy().tobytes()).digest()


def open_regular(path, what: str = "checkpoint file"):
    """``open(path, "rb")`` for a regular file only: a FIFO, a device or a socket named like
    a checkpoint is refused at once (opened non-blocking, then checked with ``fstat``)
    instead of blocking forever. Raises :class:`CheckpointError` naming ``path``; other
    ``OSError`` s propagate."""
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a directory"
                    if stat.S_ISDIR(mode) else "a device or socket")
            raise CheckpointError(f"{path}: is {kind}, not a regular file; wsviz reads a "
                                  f"{what} only from a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
