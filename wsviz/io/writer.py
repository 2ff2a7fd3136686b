"""Atomic writer of Hugging Face model directories (sharded safetensors + index).

>>> with HFDirWriter("out", force=False, copy_from="base_dir") as w:
...     for name, t in tensors:
...         w.add(name, t)
...     w.write_text("wsviz_recipe.json", recipe.to_json())
# on success: everything is renamed into place at once; on any error: nothing is left

Tensors go to a temporary sibling directory (``.OUT.wsviz-tmp-PID-XXXX``, locked while this
process lives, swept by a later run if it dies: see :mod:`wsviz.io.outputs`) in shards of at
most ``max_shard_bytes``; ``config.json``, ``generation_config.json`` and tokenizer files are
copied from ``copy_from``; the copied ``config.json``'s ``torch_dtype`` / ``dtype`` is set to
the dtype of the floating tensors written (when they share one). Only at the end is the
temporary directory swapped into place as ``OUT`` (an existing ``OUT`` is refused unless
``force``; with ``force`` it is replaced only after the new one is complete). ``inputs`` are
the paths the run reads: an ``OUT`` that is, contains or lies inside one of them is refused
(:func:`~wsviz.io.outputs.check_output`). A write error (disk full) removes the temporary
directory and raises :class:`~wsviz.errors.OutputError`; ``OUT`` is untouched.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from wsviz.errors import CheckpointError, OutputError
from wsviz.io.outputs import TempOutput, check_output, parse_size  # noqa: F401 - re-exported

COPY_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model", "vocab.txt", "vocab.json", "merges.txt",
    "added_tokens.json", "chat_template.jinja", "sentencepiece.bpe.model", "spiece.model",
)


class HFDirWriter:
    """Context manager writing one HF directory atomically (see the module docstring)."""

    def __init__(self, outdir, *, force: bool = False, copy_from=None,
                 max_shard_bytes: int | str = "2GB", inputs: Iterable = ()):
        self.force = force
        self.copy_from = Path(copy_from) if copy_from else None
        self.max_shard = parse_size(max_shard_bytes)
        self.out = check_output(outdir, [*inputs, self.copy_from], force=force, kind="dir",
                                hint="pass --force (force=True) to replace it")
        self._tmp = TempOutput(self.out, kind="dir")
        self.tmp = self._tmp.path
        self._buf: dict[str, torch.Tensor] = {}
        self._buf_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []
        self._names: set[str] = set()
        self._float_dtypes: set[torch.dtype] = set()
        self.total_size = 0
        self._done = False

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.finish()
        else:
            self.abort()
        return False

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor`` (moved to CPU, made contiguous) under ``name``."""
        if name in self._names:
            raise CheckpointError(f"tensor {name!r} written twice")
        t = tensor.detach().to("cpu").contiguous()
        nb = t.numel() * t.element_size()
        if self._buf and self._buf_bytes + nb > self.max_shard:
            self._flush()
        self._buf[name] = t
        if t.is_floating_point():
            self._float_dtypes.add(t.dtype)
        self._names.add(name)
        self._buf_bytes += nb
        self.total_size += nb

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self._buf:
            return
        fname = f"shard-{len(self._shards):05d}.safetensors"
        try:
            save_file(self._buf, str(self.tmp / fname), metadata={"format": "pt"})
        except Exception as e:  # disk full, permissions, ...
            self.abort()
            raise OutputError(f"writing {self.out} failed ({e}); nothing was written "
                              f"to {self.out}") from None
        self._shards.append((fname, list(self._buf)))
        self._buf, self._buf_bytes = {}, 0

    def write_text(self, relname: str, text: str) -> None:
        """Add a small text file (e.g. the recipe) to the directory."""
        self._guard(lambda: (self.tmp / relname).write_text(text))

    def _guard(self, fn):
        try:
            return fn()
        except OSError as e:
            self.abort()
            raise OutputError(f"writing {self.out} failed ({e.strerror or e}); nothing was "
                              f"written to {self.out}") from None

    def finish(self) -> Path:
        """Write the last shard, the index and copied files, then rename into place."""
        if self._done:
            return self.out
        self._flush()
        n = len(self._shards)

        def _final():
            weight_map = {}
            for i, (fname, names) in enumerate(self._shards):
                final = ("model.safetensors" if n == 1
                         else f"model-{i + 1:05d}-of-{n:05d}.safetensors")
                os.replace(self.tmp / fname, self.tmp / final)
                weight_map.update({nm: final for nm in names})
            if n > 1:
                idx = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
                (self.tmp / "model.safetensors.index.json").write_text(json.dumps(idx, indent=2))
            if self.copy_from is not None and self.copy_from.is_dir():
                for f in COPY_FILES:
                    src = self.copy_from / f
                    if src.is_file() and not (self.tmp / f).exists():
                        shutil.copyfile(src, self.tmp / f)  # content only: modes follow umask
            self._set_config_dtype()

        self._guard(_final)
        self._tmp.commit(force=self.force)
        self._done = True
        return self.out

    def _set_config_dtype(self) -> None:
        """State the written floating dtype in ``config.json`` (``torch_dtype`` and/or
        ``dtype``, whichever it has; ``torch_dtype`` if neither), as mergekit writes it."""
        cfg = self.tmp / "config.json"
        if len(self._float_dtypes) != 1 or not cfg.is_file():
            return
        try:
            d = json.loads(cfg.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(d, dict):
            return
        name = str(next(iter(self._float_dtypes))).replace("torch.", "")
        keys = [k for k in ("torch_dtype", "dtype") if k in d] or ["torch_dtype"]
        if all(d.get(k) == name for k in keys):
            return
        for k in keys:
            d[k] = name
        cfg.unlink()  # the copy may carry a read-only mode
        cfg.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")

    def abort(self) -> None:
        """Remove the temporary directory (idempotent)."""
        self._done = True
        self._tmp.abort()
