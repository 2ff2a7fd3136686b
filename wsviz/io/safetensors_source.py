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
import struct
from pathlib import Path

import torch

from wsviz.errors import CheckpointError
from wsviz.io.source import CheckpointSource, TensorInfo, dtype_size, file_fingerprint

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


def read_safetensors_header(path: Path) -> tuple[int, dict]:
    """Return ``(data_start, header)`` of a safetensors file, validating every entry.

    Raises :class:`CheckpointError` naming the file when it is truncated or corrupt
    (header length past the end of file, bad JSON, offsets outside the data,
    a byte count that does not match shape x dtype, unknown dtype).
    """
    size = path.stat().st_size
    fix = "re-download or re-save the checkpoint"
    if size < 8:
        raise CheckpointError(f"{path}: not a safetensors file ({size} bytes; truncated?); {fix}")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(size - 8, _MAX_HEADER):
            raise CheckpointError(
                f"{path}: corrupt or truncated safetensors file (header claims {n} bytes, "
                f"file has {size}); {fix}"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e}); {fix}") from None
    data_len = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except KeyError as e:
            raise CheckpointError(
                f"{path}: tensor {name!r} has an unsupported or missing field ({e}); {fix}"
            ) from None
        expected = math.prod(shape) * dtype_size(dtype)
        if end > data_len or begin < 0 or end - begin != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} lies outside the file or has the wrong size "
                f"(bytes {begin}..{end} of {data_len}, expected {expected}); the file is "
                f"truncated or corrupt; {fix}"
            )
    return 8 + n, header


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
        with open(self.path, "rb") as f:
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
