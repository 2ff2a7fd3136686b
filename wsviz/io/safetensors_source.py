"""Lazy reader for one ``.safetensors`` file.

The file layout is ``[u64 little-endian header length N][N bytes JSON header][data]``;
the header maps each name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` with
offsets relative to the start of the data. Only the header is read at open; ``get``
seeks to one tensor's byte range and reads exactly those bytes (``bytes_read`` counts
them, which the tests use to prove no other tensor is touched).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch

from wsviz.errors import CheckpointError
from wsviz.io.source import (
    CheckpointSource,
    TensorInfo,
    dtype_size,
    file_fingerprint,
    open_regular,
)
from wsviz.textsafe import cap

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _code, _name in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _name):
        SAFETENSORS_DTYPES[_code] = getattr(torch, _name)

_MAX_HEADER = 100 << 20


def _no_constant(name: str):
    """JSON has no NaN / Infinity: a header using them is not valid (the reference
    implementation refuses it too)."""
    raise ValueError(f"{name} is not valid JSON")


def _is_count(x) -> bool:
    """A JSON non-negative integer (``true``/``2.0``/``-1`` are not)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


#: the largest element count a shape may describe (torch's strides are int64, and so is
#: every product of trailing dimensions, zero-size dimensions aside)
_MAX_NUMEL = 2**62
_FIX = "re-download or re-save the checkpoint"


def read_safetensors_header(path: Path) -> tuple[int, dict]:
    """Return ``(data_start, header)`` of a safetensors file, validating every entry.

    Checks what the format specifies: the file is a regular file; the header is a JSON
    object with valid UTF-8 names (no lone surrogates); ``__metadata__`` maps strings to
    strings; each tensor has a known ``dtype`` string, a ``shape`` list of non-negative
    integers whose non-zero dimensions multiply to at most :data:`_MAX_NUMEL` and
    ``data_offsets`` ``[begin, end]`` with ``end - begin`` = elements x dtype size; the
    tensors' byte ranges neither overlap nor leave holes and cover the data exactly (as
    the reference implementation requires, so no two tensors share bytes and nothing hides
    in the file).

    Raises :class:`CheckpointError` naming the file (and tensor) otherwise, and when it is
    unreadable, truncated or not a regular file (a FIFO never blocks the reader).
    """
    size, n, raw = _read_raw_header(path)
    header = _parse_header(path, raw)
    data_len = size - 8 - n
    spans = []
    for name, entry in header.items():
        if name != "__metadata__":
            spans.append(_check_entry(path, name, entry, data_len))
    _check_spans(path, spans, data_len)
    return 8 + n, header


def _read_raw_header(path: Path) -> tuple[int, int, bytes]:
    """``(file size, header length N, the N header bytes)`` of a regular file."""
    try:
        with open_regular(path, "safetensors file") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path}: not a safetensors file ({size} bytes; truncated?); {_FIX}")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors file (header claims {n} bytes, "
                    f"file has {size}); {_FIX}"
                )
            return size, n, f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e}); check that it is "
                              "a readable file and not a broken or looping symlink") from None


def _parse_header(path: Path, raw: bytes) -> dict:
    """The header JSON object; names and metadata must be valid Unicode text."""
    try:
        header = json.loads(raw, parse_constant=_no_constant)
        if not isinstance(header, dict):
            raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
        for k in header:  # "\ud800" escapes decode to lone surrogates: not text
            k.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"{path}: corrupt safetensors header (a tensor name holds a lone "
                              f"surrogate escape, which is not valid Unicode); {_FIX}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e}); {_FIX}") from None
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(
            isinstance(v, str) for v in meta.values())):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ must map "
                              f"strings to strings); {_FIX}")
    return header


def _check_entry(path: Path, name: str, entry, data_len: int) -> tuple[int, int, str]:
    """Validate one tensor entry; returns its ``(begin, end, name)`` byte span."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: tensor {name!r} {what}; the header is corrupt; {_FIX}")

    if not isinstance(entry, dict):
        raise bad(f"is a JSON {type(entry).__name__}, not an object with dtype, shape "
                  "and data_offsets")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise bad(f"has no {missing[0]!r} field")
    code, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(code, str) or code not in SAFETENSORS_DTYPES:
        raise bad(f"has an unsupported dtype {code!r} (supported: "
                  f"{', '.join(SAFETENSORS_DTYPES)})")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"has shape {cap(repr(shape), 200)}; a shape is a list of non-negative "
                  "integers")
    if len(shape) > 64 or math.prod(d for d in shape if d) > _MAX_NUMEL:
        raise bad(f"has shape {cap(repr(shape), 200)}, too large for any tensor (its "
                  "non-zero dimensions multiply past 2**62)")
    if (not isinstance(offs, list) or len(offs) != 2 or not all(_is_count(o) for o in offs)
            or offs[0] > offs[1]):
        raise bad(f"has data_offsets {cap(repr(offs), 200)}; they are [begin, end] with "
                  "0 <= begin <= end")
    begin, end = offs
    expected = math.prod(shape) * dtype_size(SAFETENSORS_DTYPES[code])
    if end > data_len or end - begin != expected:
        raise CheckpointError(
            f"{path}: tensor {name!r} lies outside the file or has the wrong size "
            f"(bytes {begin}..{end} of {data_len}, expected {expected}); the file is "
            f"truncated or corrupt; {_FIX}"
        )
    return begin, end, name


def _check_spans(path: Path, spans: list[tuple[int, int, str]], data_len: int) -> None:
    """The byte spans tile ``[0, data_len)`` exactly: no overlap, no hole, no tail."""
    spans.sort()
    pos, prev = 0, None
    for begin, end, name in spans:
        if begin < pos:
            raise CheckpointError(f"{path}: tensor {name!r} (bytes {begin}..{end}) overlaps "
                                  f"tensor {prev!r}; the file is corrupt or crafted; {_FIX}")
        if begin > pos:
            raise CheckpointError(f"{path}: bytes {pos}..{begin} of the data belong to no "
                                  f"tensor; the file is corrupt or crafted; {_FIX}")
        pos, prev = end, name
    if pos != data_len:
        raise CheckpointError(f"{path}: {data_len - pos} bytes after the last tensor belong to "
                              f"no tensor; the file is corrupt or crafted; {_FIX}")


class SafetensorsFileSource(CheckpointSource):
    """One ``.safetensors`` file, read tensor by tensor (see module docstring)."""

    def __init__(self, path: str | Path, label: str | None = None):
        self.path = Path(path)
        self.label = label or self.path.stem
        self._data_start, header = read_safetensors_header(self.path)
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries = dict(
            sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
        )
        self._infos = {
            name: TensorInfo(
                name, tuple(e["shape"]), SAFETENSORS_DTYPES[e["dtype"]]
            )
            for name, e in self._entries.items()
        }
        self.bytes_read = 0

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def _read(self, name: str) -> torch.Tensor:
        info = self._infos[name]
        begin, end = self._entries[name]["data_offsets"]
        buf = torch.empty(end - begin, dtype=torch.uint8)  # no zero-fill
        with open_regular(self.path, "safetensors file") as f:
            f.seek(self._data_start + begin)
            got = f.readinto(memoryview(buf.numpy())) if end > begin else 0
        self.bytes_read += got
        if got != end - begin:
            raise CheckpointError(f"{self.path}: tensor {name!r} is truncated on disk")
        if end == begin:
            return torch.empty(info.shape, dtype=info.dtype)
        return buf.view(info.dtype).reshape(info.shape)

    def _fingerprint_parts(self) -> list[bytes]:
        return [file_fingerprint(self.path)]
