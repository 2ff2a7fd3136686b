"""Hugging Face model directories: single or sharded, safetensors or pickled ``.bin``.

Looked for, in this order: ``model.safetensors.index.json``, ``model.safetensors``,
``pytorch_model.bin.index.json``, ``pytorch_model.bin``, then any ``*.safetensors``
files (treated as shards). Shards are opened only when one of their tensors is listed
or read; safetensors shards cost just their header.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import torch

from wsviz.errors import CheckpointError
from wsviz.io.safetensors_source import SafetensorsFileSource
from wsviz.io.source import CheckpointSource, TensorInfo, open_regular
from wsviz.io.torch_source import TorchFileSource

WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)

#: names an untied-but-missing output head may alias, per family
_TIED_HEADS = {
    "lm_head.weight": (
        "model.embed_tokens.weight",
        "transformer.wte.weight",
        "model.decoder.embed_tokens.weight",
        "embed_tokens.weight",
        "wte.weight",
    ),
}


def read_json_object(p: Path, what: str) -> dict:
    """``p`` parsed as a JSON object; :class:`CheckpointError` naming ``p`` when it is
    unreadable, not UTF-8 / JSON, or not an object."""
    try:
        with open_regular(p, what) as f:
            obj = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read it ({e.strerror or e}); check its permissions "
                              "and symlinks") from None
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError, JSONDecodeError
        raise CheckpointError(f"{p}: not a valid {what} (invalid UTF-8 JSON: {e}); re-save "
                              "or re-download it") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: not a valid {what} (a JSON {type(obj).__name__}, not an "
                              "object); re-save or re-download it")
    return obj


def _shard_name_ok(s) -> bool:
    """A shard named by an index stays inside the model directory: a relative path with no
    ``..`` (symlinks inside the directory are followed, as in the Hugging Face cache)."""
    if not isinstance(s, str) or not s or "\x00" in s or "\\" in s:
        return False
    p = PurePosixPath(s)
    return not p.is_absolute() and ".." not in p.parts and s == str(p)


def find_weight_files(d: Path) -> tuple[str, list[Path], dict[str, str] | None]:
    """Return ``(format, shard paths, weight_map or None)`` for an HF directory.

    Raises :class:`CheckpointError` naming the directory when no weights are found, or the
    index when it is not a ``{"weight_map": {tensor: shard file}}`` object, names a shard
    outside the directory (absolute, ``..``) or a missing shard.
    """
    for fname in WEIGHT_FILES:
        p = d / fname
        if not p.is_file():
            continue
        if fname.endswith(".index.json"):
            weight_map = read_json_object(p, "shard index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(
                    f"{p}: not a valid shard index ('weight_map' must be a non-empty object "
                    "mapping tensor names to shard files); re-save the model")
            suffix = ".safetensors" if "safetensors" in fname else ".bin"
            for name, s in weight_map.items():
                if not _shard_name_ok(s) or not s.endswith(suffix):
                    raise CheckpointError(
                        f"{p}: tensor {name!r} is mapped to {s!r}; an index may name only "
                        f"{suffix} files inside {d} (no absolute paths or '..'); fix the "
                        "index or re-save the model")
            shards = sorted({d / s for s in weight_map.values()})
            missing = [s.name for s in shards if not s.is_file()]
            if missing:
                raise CheckpointError(
                    f"{p}: names shard file(s) {', '.join(missing)} that do not exist in {d}; "
                    "copy the missing shards or re-save the model"
                )
            fmt = "safetensors-sharded" if "safetensors" in fname else "bin-sharded"
            return fmt, shards, weight_map
        return ("safetensors" if fname.endswith("safetensors") else "bin"), [p], None
    loose = sorted(d.glob("*.safetensors"))
    if loose:
        return "safetensors", loose, None
    raise CheckpointError(
        f"{d}: no model weights found (looked for {', '.join(WEIGHT_FILES)} or *.safetensors); "
        "point wsviz at a Hugging Face model directory or a weights file"
    )


class HFDirSource(CheckpointSource):
    """A Hugging Face model directory read tensor by tensor across its shards."""

    def __init__(self, path: str | Path, label: str | None = None):
        self.path = Path(path)
        self.label = label or self.path.name
        self.format, self.shard_paths, weight_map = find_weight_files(self.path)
        self._shards: dict[Path, CheckpointSource] = {}
        self._infos: dict[str, TensorInfo] | None = None
        self._aliases: dict[str, str] | None = None
        self._indexed = weight_map is not None
        self._where: dict[str, Path] = (
            {n: self.path / s for n, s in weight_map.items()} if weight_map else {}
        )
        self._config = None
        cfg = self.path / "config.json"
        if cfg.is_file():
            self._config = read_json_object(cfg, "model config")

    def _shard(self, p: Path) -> CheckpointSource:
        if p not in self._shards:
            if p.suffix == ".safetensors":
                self._shards[p] = SafetensorsFileSource(p)
            else:
                self._shards[p] = TorchFileSource(p)
        return self._shards[p]

    def infos(self) -> dict[str, TensorInfo]:
        if self._infos is None:
            infos: dict[str, TensorInfo] = {}
            for p in self.shard_paths:
                for name, info in self._shard(p).infos().items():
                    if self._indexed and self._where.get(name) != p:
                        continue
                    infos[name] = info
                    self._where[name] = p
            if self._indexed:
                absent = [n for n, p in self._where.items() if n not in infos]
                if absent:
                    raise CheckpointError(
                        f"{self.path}: index lists {absent[0]!r} in {self._where[absent[0]].name} "
                        "but that shard does not hold it; the checkpoint is inconsistent"
                    )
            self._infos = infos
        return self._infos

    def files(self) -> list[Path]:
        return [self.path, *self.shard_paths]

    def shard_of(self, name: str) -> Path:
        """Path of the shard file that holds tensor ``name``."""
        self.infos()
        return self._where[name]

    def _read(self, name: str) -> torch.Tensor:
        return self._shard(self.shard_of(name)).get(name, check_finite=False)

    @property
    def bytes_read(self) -> int:
        """Bytes read from safetensors shards so far (for the lazy-reading tests)."""
        return sum(getattr(s, "bytes_read", 0) for s in self._shards.values())

    def config(self) -> dict | None:
        return self._config

    def aliases(self) -> dict[str, str]:
        if self._aliases is None:
            self._aliases = self._find_aliases()
        return self._aliases

    def _find_aliases(self) -> dict[str, str]:
        infos = self.infos()  # opens every shard, so the loop below sees them all
        out = {}
        for shard in self._shards.values():
            out.update(shard.aliases())
        # alias an absent head only when config.json says the embeddings are tied
        # (transformers' default is tied); without a config an absent head is missing
        tied = self._config is not None and self._config.get("tie_word_embeddings", True)
        if tied:
            for head, candidates in _TIED_HEADS.items():
                if head not in infos:
                    for c in candidates:
                        if c in infos:
                            out[head] = c
                            break
        return out

    def _fingerprint_parts(self) -> list[bytes]:
        parts = []
        for p in self.shard_paths:
            parts.extend(self._shard(p)._fingerprint_parts())
        return parts
