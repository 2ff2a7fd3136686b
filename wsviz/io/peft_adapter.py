"""PEFT LoRA adapters read as dense weight deltas under the base model's tensor names.

For a LoRA module with ``lora_A.weight: [r, in]`` and ``lora_B.weight: [out, r]`` the dense
delta is ``ΔW = (B @ A) * s`` with ``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with
``use_rslora``; ``rank_pattern`` / ``alpha_pattern`` override per module), transposed when
``fan_in_fan_out`` (GPT-2 Conv1D). This is the same order of operations PEFT's
``merge_and_unload`` uses, so ``base + ΔW`` equals PEFT's merged weight bitwise.
Full tensors saved through ``modules_to_save`` replace the base tensor.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from wsviz.errors import CheckpointError
from wsviz.io.hf_dir import read_json_object
from wsviz.io.safetensors_source import SafetensorsFileSource
from wsviz.io.source import CheckpointSource, TensorInfo
from wsviz.io.torch_source import TorchFileSource

_PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


def is_peft_adapter_dir(path: Path) -> bool:
    """True when ``path`` is a directory holding ``adapter_config.json``."""
    return path.is_dir() and (path / "adapter_config.json").is_file()


def _check_lora_config(cfg: dict, where: Path) -> None:
    """Types and ranges of the fields the dense delta uses: ``r`` (and ``rank_pattern``
    values) positive integers, ``lora_alpha`` (and ``alpha_pattern`` values) finite numbers,
    the flags booleans. Raises :class:`CheckpointError` naming the field."""
    def bad(field, v, want):
        return CheckpointError(f"{where}: {field} is {v!r}; it must be {want}; fix the adapter "
                               "config")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if "r" in cfg and not (is_int(cfg["r"]) and cfg["r"] > 0):
        raise bad("r", cfg["r"], "a positive integer")
    if "lora_alpha" in cfg and not is_num(cfg["lora_alpha"]):
        raise bad("lora_alpha", cfg["lora_alpha"], "a finite number")
    for key, ok, want in (("rank_pattern", lambda v: is_int(v) and v > 0, "positive integers"),
                          ("alpha_pattern", is_num, "finite numbers")):
        pat = cfg.get(key)
        if pat is None:
            continue
        if not isinstance(pat, dict):
            raise bad(key, pat, f"an object mapping module patterns to {want}")
        for k, v in pat.items():
            if not ok(v):
                raise bad(f"{key}[{k!r}]", v, want[:-1])
            try:
                re.compile(k)
            except re.error as e:
                raise bad(f"{key} key", k, f"a valid regular expression ({e})") from None
    for flag in ("use_rslora", "fan_in_fan_out"):
        if cfg.get(flag) is not None and not isinstance(cfg[flag], bool):
            raise bad(flag, cfg[flag], "true or false")
    if "peft_type" in cfg and not isinstance(cfg["peft_type"], str):
        raise bad("peft_type", cfg["peft_type"], "a string such as \"LORA\"")


def _pattern_value(patterns: dict, module: str, default):
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


class LoraAdapter:
    """A PEFT LoRA adapter directory: its config and its per-module (A, B, scale)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        cfg_path = self.path / "adapter_config.json"
        self.config = read_json_object(cfg_path, "adapter config")
        _check_lora_config(self.config, cfg_path)
        peft_type = str(self.config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise CheckpointError(
                f"{cfg_path}: peft_type {peft_type} is not supported (only LORA adapters "
                "have a dense delta wsviz can compute)"
            )
        weights = self.path / "adapter_model.safetensors"
        if weights.is_file():
            self._file: CheckpointSource = SafetensorsFileSource(weights)
        elif (self.path / "adapter_model.bin").is_file():
            self._file = TorchFileSource(self.path / "adapter_model.bin")
        else:
            raise CheckpointError(
                f"{self.path}: adapter_config.json found but no adapter_model.safetensors / "
                "adapter_model.bin"
            )
        self.modules: dict[str, dict[str, str]] = {}
        self.full: dict[str, str] = {}
        for key in self._file.names():
            inner = key.removeprefix(_PREFIX)
            m = _LORA.match(inner)
            if m:
                self.modules.setdefault(m["module"], {})[m["ab"]] = key
            elif ".lora_" not in inner:
                self.full[inner.replace(".modules_to_save.default", "")] = key
        incomplete = [m for m, ab in self.modules.items() if set(ab) != {"A", "B"}]
        if incomplete:
            raise CheckpointError(
                f"{weights}: LoRA module {incomplete[0]!r} lacks its lora_A or lora_B weight"
            )
        for module, keys in self.modules.items():
            a, b = self._file.info(keys["A"]).shape, self._file.info(keys["B"]).shape
            if len(a) != 2 or len(b) != 2 or a[0] != b[1] or a[0] == 0:
                raise CheckpointError(
                    f"{self._file.where()}: LoRA module {module!r} has lora_A {list(a)} and "
                    f"lora_B {list(b)}; expected A [r, in] and B [out, r] with the same r > 0 "
                    "(the adapter is corrupt)")

    def files(self) -> list[Path]:
        """The adapter directory and its weights file."""
        return [self.path, *self._file.files()]

    def scale(self, module: str) -> float:
        """``lora_alpha / r`` (or ``/ sqrt(r)`` with rslora) for one module."""
        r = _pattern_value(self.config.get("rank_pattern"), module, self.config.get("r", 8))
        alpha = _pattern_value(
            self.config.get("alpha_pattern"), module, self.config.get("lora_alpha", r)
        )
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def delta_shape(self, module: str) -> tuple[int, int]:
        """Shape of the dense ``ΔW`` of ``module``: ``(out, in)``, or ``(in, out)`` with
        ``fan_in_fan_out`` — read from the A/B headers, no tensor data."""
        keys = self.modules[module]
        shape = (self._file.info(keys["B"]).shape[0], self._file.info(keys["A"]).shape[1])
        return shape[::-1] if self.config.get("fan_in_fan_out") else shape

    def target_names(self) -> list[str]:
        """Base-model tensor names the adapter changes (``<module>.weight`` and full tensors)."""
        return [f"{m}.weight" for m in self.modules] + list(self.full)

    def delta(self, name: str, base_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Dense ``ΔW`` for base tensor ``name`` (shape of the base weight), fp32 or stored dtype.

        For a ``modules_to_save`` tensor the delta is ``full - base_weight``.
        """
        if name in self.full:
            full = self._file.get(self.full[name])
            if base_weight is None:
                raise CheckpointError(f"{self.path}: {name!r} is a full tensor; need the base")
            return full.to(base_weight.dtype) - base_weight
        module = name[: -len(".weight")]
        keys = self.modules[module]
        a = self._file.get(keys["A"])
        b = self._file.get(keys["B"])
        stored = a.dtype
        if stored in (torch.float16, torch.bfloat16):  # PEFT casts half to fp32 on CPU
            a, b = a.float(), b.float()
        d = (b @ a) * self.scale(module)
        if self.config.get("fan_in_fan_out"):
            d = d.T
        return d.to(stored)


class LoraFinetunedSource(CheckpointSource):
    """The fine-tuned model a LoRA adapter defines: ``base + ΔW`` on targeted tensors.

    Every other tensor is the base tensor. Raises :class:`CheckpointError` when an
    adapter target is not a base tensor or has a different shape.
    """

    def __init__(self, adapter_dir: str | Path, base: CheckpointSource, label: str | None = None):
        self.adapter = LoraAdapter(adapter_dir)
        self.base = base
        self.path = self.adapter.path
        self.label = label or self.path.name
        infos = base.infos()
        for name in self.adapter.target_names():
            if name not in infos:
                hint = self.adapter.config.get("base_model_name_or_path")
                raise CheckpointError(
                    f"{self.path}: adapter targets {name!r}, which is not a tensor of the base "
                    f"{base.where()} (adapter was made for {hint!r}); pass the adapter's own "
                    "base model"
                )
        for module in self.adapter.modules:
            name = f"{module}.weight"
            shape = self.adapter.delta_shape(module)
            if shape != infos[name].shape:
                raise CheckpointError(
                    f"{self.path}: LoRA delta for {name!r} has shape {shape} but the base tensor "
                    f"is {infos[name].shape}; the adapter belongs to another base model"
                )

    def infos(self) -> dict[str, TensorInfo]:
        return self.base.infos()

    def files(self) -> list[Path]:
        return [*self.adapter.files(), *self.base.files()]

    def aliases(self) -> dict[str, str]:
        return self.base.aliases()

    def config(self) -> dict | None:
        return self.base.config()

    def _read(self, name: str) -> torch.Tensor:
        w = self.base.get(name, check_finite=False)
        if name in self.adapter.full or name[: -len(".weight")] in self.adapter.modules:
            return w + self.adapter.delta(name, w).to(w.dtype)
        return w

    def _fingerprint_parts(self) -> list[bytes]:
        return [self.base.fingerprint().encode(), *self.adapter._file._fingerprint_parts()]


class LoraDeltaSource(CheckpointSource):
    """Only the adapter's dense deltas ``ΔW``, under base tensor names (no base needed)."""

    def __init__(self, adapter_dir: str | Path, label: str | None = None):
        self.adapter = LoraAdapter(adapter_dir)
        self.path = self.adapter.path
        self.label = label or self.path.name
        self._infos = {}
        for module, keys in self.adapter.modules.items():
            name = f"{module}.weight"
            dtype = self.adapter._file.info(keys["A"]).dtype
            self._infos[name] = TensorInfo(name, self.adapter.delta_shape(module), dtype)

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def files(self) -> list[Path]:
        return self.adapter.files()

    def _read(self, name: str) -> torch.Tensor:
        return self.adapter.delta(name)

    def _fingerprint_parts(self) -> list[bytes]:
        return self.adapter._file._fingerprint_parts()
