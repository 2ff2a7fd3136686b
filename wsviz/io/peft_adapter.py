"""PEFT LoRA / DoRA adapters read as the fine-tuned weights PEFT's ``merge_and_unload`` makes.

Per module, with ``A = lora_A.weight [r, in]``, ``B = lora_B.weight [out, r]`` and the scale
``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``; ``rank_pattern`` /
``alpha_pattern`` override per module), the dense LoRA delta is ``ΔW = (B @ A) · s``
(transposed when ``fan_in_fan_out``, GPT-2 Conv1D; ``(B @ A)^T · s`` for an Embedding's
``lora_embedding_A/B``). The merged weight is

- LoRA (Linear):   ``W' = W + ΔW``
- DoRA (``use_dora``, Linear): ``W' = m / ‖W + ΔW‖_row · (W + ΔW)`` — ``m`` (the saved
  ``lora_magnitude_vector``, ``[out]``) rescales each output row of ``W + ΔW`` to norm ``m``
  (L2 norm over the input dim, one per output row); so DoRA's delta ``W' - W`` is *not*
  ``ΔW`` and depends on the base weight.
- ``lora_B.bias`` (``lora_bias``): ``b' = b + bias_B · s``.

Rounding follows PEFT as ``PeftModel.from_pretrained(...).merge_and_unload()`` does it on CPU
with its defaults: adapter weights are loaded as float32 (``autocast_adapter_dtype``), ``ΔW``
and the DoRA factor are computed in float32, and a Linear layer adds the float32 ``ΔW`` to a
bf16/fp16 base before rounding once to the base dtype; an Embedding rounds ``ΔW`` to the base
dtype first (PEFT's ``Embedding.merge``). With a float32 base every result equals PEFT's bitwise.
Full tensors saved through ``modules_to_save`` or a targeted embedding's ``base_layer``
replace the base tensor. Other LoRA variants (arrow, bdlora, alora, ...), DoRA on embeddings,
and convolution LoRA are refused with a :class:`CheckpointError` rather than read wrongly.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from wsviz.errors import CheckpointError
from wsviz.io.hf_dir import read_json_object
from wsviz.io.safetensors_source import SafetensorsFileSource
from wsviz.io.source import CheckpointSource, TensorInfo
from wsviz.io.torch_source import TorchFileSource

_PREFIX = "base_model.model."
_PART = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
    r"lora_magnitude_vector)(?:\.(?P<rest>.+))?$")
#: config keys of PEFT LoRA variants whose merged weight is not LoRA's or DoRA's
_VARIANTS = ("arrow_config", "use_bdlora", "alora_invocation_tokens", "velora_config",
             "monteclora_config", "mica", "kasa_config")


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


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """PEFT autocasts half-precision adapters to float32; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class LoraModule:
    """The saved tensors of one adapted module (keys into the adapter file)."""

    A: str | None = None
    B: str | None = None
    bias: str | None = None          # lora_B.bias (lora_bias=True)
    magnitude: str | None = None     # DoRA's lora_magnitude_vector
    embedding: bool = False          # lora_embedding_A / _B (an nn.Embedding)

    @property
    def dora(self) -> bool:
        return self.magnitude is not None


class LoraAdapter:
    """A PEFT LoRA / DoRA adapter directory: its config and its per-module tensors.

    Raises :class:`CheckpointError` (naming the file and key) for an unreadable config, a
    non-LoRA ``peft_type``, a LoRA variant wsviz cannot merge, an incomplete module or an
    adapter tensor it does not know.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        cfg_path = self.path / "adapter_config.json"
        self.config = read_json_object(cfg_path, "adapter config")
        _check_lora_config(self.config, cfg_path)
        peft_type = str(self.config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise CheckpointError(
                f"{cfg_path}: peft_type {peft_type} is not supported (only LORA / DoRA "
                "adapters have a dense delta wsviz can compute)"
            )
        used = [k for k in _VARIANTS if self.config.get(k)]
        if used:
            raise CheckpointError(
                f"{cfg_path}: the adapter uses the PEFT LoRA variant {used[0]!r}, whose merged "
                "weight wsviz does not compute; merge it with PEFT's merge_and_unload() and "
                "open the merged model instead")
        weights = self.path / "adapter_model.safetensors"
        if weights.is_file():
            self._file: CheckpointSource = SafetensorsFileSource(weights)
        elif (self.path / "adapter_model.bin").is_file():
            weights = self.path / "adapter_model.bin"
            self._file = TorchFileSource(weights)
        else:
            raise CheckpointError(
                f"{self.path}: adapter_config.json found but no adapter_model.safetensors / "
                "adapter_model.bin"
            )
        self.weights_file = weights
        self.modules: dict[str, LoraModule] = {}
        self.full: dict[str, str] = {}
        for key in self._file.names():
            inner = key.removeprefix(_PREFIX)
            m = _PART.match(inner)
            if m is None:
                if ".lora_" in inner:
                    raise CheckpointError(
                        f"{weights}: unsupported LoRA tensor {key!r}; wsviz reads lora_A/lora_B "
                        "(Linear, Embedding), lora_B bias and DoRA's lora_magnitude_vector")
                name = inner.replace(".modules_to_save.default", "").replace(".base_layer.", ".")
                self.full[name] = key
                continue
            mod = self.modules.setdefault(m["module"], LoraModule())
            part, rest = m["part"], (m["rest"] or "")
            if part == "lora_B" and rest.endswith("bias"):
                mod.bias = key
            elif part == "lora_magnitude_vector":
                mod.magnitude = key
            elif part in ("lora_A", "lora_B"):
                setattr(mod, part[-1], key)
            else:
                mod.embedding = True
                setattr(mod, part[-1], key)
        for name, mod in self.modules.items():
            if mod.A is None or mod.B is None:
                raise CheckpointError(
                    f"{weights}: LoRA module {name!r} lacks its lora_A or lora_B weight")
            if len(self._file.info(mod.A).shape) != 2:
                raise CheckpointError(
                    f"{weights}: LoRA module {name!r} is a convolution (lora_A has shape "
                    f"{tuple(self._file.info(mod.A).shape)}); wsviz reads Linear and Embedding "
                    "LoRA only — merge it with PEFT and open the merged model")
            if mod.dora and mod.embedding:
                raise CheckpointError(
                    f"{weights}: DoRA on the embedding {name!r} is not supported; merge it "
                    "with PEFT's merge_and_unload() and open the merged model")
        if self.config.get("use_dora") and not any(m.dora for m in self.modules.values()):
            raise CheckpointError(
                f"{cfg_path}: use_dora is set but the adapter holds no lora_magnitude_vector; "
                "the file is incomplete")
        self._check_ranks(cfg_path)

    def _check_ranks(self, cfg_path: Path) -> None:
        """Each module's ``lora_A [r, in]`` and ``lora_B [out, r]`` share ``r`` > 0, and that
        ``r`` is the config's (``rank_pattern`` / ``r``): the scale ``lora_alpha / r`` uses
        it. CheckpointError naming both numbers otherwise."""
        for name, mod in self.modules.items():
            a, b = self._file.info(mod.A).shape, self._file.info(mod.B).shape
            if len(b) != 2 or a[0] != b[1] or a[0] == 0:
                raise CheckpointError(
                    f"{self._file.where()}: LoRA module {name!r} has lora_A {list(a)} and "
                    f"lora_B {list(b)}; expected A [r, in] and B [out, r] with the same r > 0 "
                    "(the adapter is corrupt)")
            r = _pattern_value(self.config.get("rank_pattern"), name, self.config.get("r", 8))
            if r != a[0]:
                raise CheckpointError(
                    f"{cfg_path}: r = {r} (the scale lora_alpha / r uses it) but LoRA module "
                    f"{name!r} has rank {a[0]} (lora_A {list(a)}); the config does not "
                    "belong to these weights: fix r (or rank_pattern) or re-save the adapter")

    def files(self) -> list[Path]:
        """The adapter directory and its weights file."""
        return [self.path, *self._file.files()]

    @property
    def is_dora(self) -> bool:
        """True when any module is a DoRA module (its delta depends on the base weight)."""
        return any(m.dora for m in self.modules.values())

    def scale(self, module: str) -> float:
        """``lora_alpha / r`` (or ``/ sqrt(r)`` with rslora) for one module."""
        r = _pattern_value(self.config.get("rank_pattern"), module, self.config.get("r", 8))
        alpha = _pattern_value(
            self.config.get("alpha_pattern"), module, self.config.get("lora_alpha", r)
        )
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def _fifo(self, module: str) -> bool:
        return bool(self.config.get("fan_in_fan_out")) and not self.modules[module].embedding

    def delta_shape(self, module: str) -> tuple[int, int]:
        """Shape of the module's weight: ``(out, in)`` (``(in, out)`` with
        ``fan_in_fan_out``; ``(num_embeddings, dim)`` for an Embedding) — from the A/B
        headers, no tensor data."""
        mod = self.modules[module]
        shape = (self._file.info(mod.B).shape[0], self._file.info(mod.A).shape[1])
        return shape[::-1] if (mod.embedding or self._fifo(module)) else shape

    def target_names(self) -> list[str]:
        """Base-model tensor names the adapter changes (weights, LoRA biases, full tensors)."""
        names = [f"{m}.weight" for m in self.modules]
        names += [f"{m}.bias" for m, mod in self.modules.items() if mod.bias]
        return names + [n for n in self.full if n not in names]

    def _module_of(self, name: str) -> tuple[str | None, str]:
        module, _, leaf = name.rpartition(".")
        return (module if module in self.modules else None), leaf

    def lora_delta(self, module: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``ΔW = (B @ A) · s`` of ``module`` in ``dtype`` (float32: PEFT's autocast), in the
        layout of the base weight (transposed for ``fan_in_fan_out`` and Embeddings)."""
        mod = self.modules[module]
        a = self._file.get(mod.A).to(dtype)
        b = self._file.get(mod.B).to(dtype)
        d = b @ a
        if mod.embedding or self._fifo(module):
            d = d.T
        return d * self.scale(module)

    def delta(self, name: str) -> torch.Tensor:
        """The dense delta of base tensor ``name`` without the base: ``ΔW`` (float32) of a
        LoRA weight or ``bias_B · s`` of a LoRA bias.

        Raises :class:`CheckpointError` for DoRA modules (their delta depends on the base —
        open the adapter with its base model) and for full (``modules_to_save``) tensors.
        """
        module, leaf = self._module_of(name)
        if module is None:
            raise CheckpointError(
                f"{self.path}: {name!r} is a full tensor of the adapter; its delta needs the "
                "base model (open the adapter with its base)")
        mod = self.modules[module]
        if leaf == "bias":
            return self._file.get(mod.bias).float() * self.scale(module)
        if mod.dora:
            raise CheckpointError(
                f"{self.path}: {module!r} is a DoRA module: its delta m·(W+ΔW)/‖W+ΔW‖ - W "
                "depends on the base weight; open the adapter together with its base model")
        return self.lora_delta(module)

    def merged(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """The fine-tuned tensor ``name`` given the base tensor ``w``, rounded as PEFT's
        ``merge_and_unload`` rounds it (see the module docstring); ``w``'s shape and dtype."""
        if name in self.full:
            w = self._file.get(self.full[name]).to(w.dtype)
        module, leaf = self._module_of(name)
        if module is None:
            return w
        mod = self.modules[module]
        cd = _compute_dtype(w.dtype)
        if leaf == "bias":
            if mod.bias is None:
                return w
            return (w.to(cd) + self._file.get(mod.bias).to(cd) * self.scale(module)).to(w.dtype)
        if leaf != "weight":
            return w
        delta = self.lora_delta(module, cd)
        if mod.embedding:  # PEFT's Embedding.merge rounds the delta to the base dtype first
            return w + delta.to(w.dtype)
        if not mod.dora:
            return (w.to(cd) + delta).to(w.dtype)
        m = self._file.get(mod.magnitude).to(cd).reshape(-1)
        fifo = self._fifo(module)
        summed = w.to(cd) + delta                      # W + ΔW, computed in float32
        rows = summed.T if fifo else summed            # [out, in]
        norm = torch.linalg.norm(rows, dim=1)          # one L2 norm per output row
        factor = (m / norm).view(-1, 1)
        if fifo:
            factor = factor.T
        return (factor * summed).to(w.dtype)


class LoraFinetunedSource(CheckpointSource):
    """The fine-tuned model a LoRA / DoRA adapter defines on ``base`` (see
    :meth:`LoraAdapter.merged`); every other tensor is the base tensor.

    Raises :class:`CheckpointError` when an adapter target is not a base tensor or has a
    different shape.
    """

    def __init__(self, adapter_dir: str | Path, base: CheckpointSource, label: str | None = None):
        self.adapter = LoraAdapter(adapter_dir)
        self.base = base
        self.path = self.adapter.path
        self.label = label or self.path.name
        infos = base.infos()
        aliases = base.aliases()
        hint = self.adapter.config.get("base_model_name_or_path")
        for name in self.adapter.target_names():
            if name not in infos and name not in aliases:
                raise CheckpointError(
                    f"{self.path}: adapter targets {name!r}, which is not a tensor of the base "
                    f"{base.where()} (adapter was made for {hint!r}); pass the adapter's own "
                    "base model"
                )
        for module, mod in self.adapter.modules.items():
            name = f"{module}.weight"
            shape = self.adapter.delta_shape(module)
            want = infos[aliases.get(name, name)].shape
            if tuple(shape) != tuple(want):
                raise CheckpointError(
                    f"{self.path}: LoRA delta for {name!r} has shape {shape} but the base tensor "
                    f"is {tuple(want)}; the adapter belongs to another base model"
                )
            if mod.dora:
                mshape = self.adapter._file.info(mod.magnitude).shape
                rows = shape[1] if self.adapter._fifo(module) else shape[0]
                if math.prod(mshape) != rows:
                    raise CheckpointError(
                        f"{self.path}: DoRA magnitude of {module!r} has {math.prod(mshape)} "
                        f"entries but the weight has {rows} output rows")
        self._targets = set(self.adapter.target_names())

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
        if name in self._targets:
            return self.adapter.merged(name, w)
        return w

    def _fingerprint_parts(self) -> list[bytes]:
        return [self.base.fingerprint().encode(), *self.adapter._file._fingerprint_parts(),
                json.dumps(self.adapter.config, sort_keys=True, default=str).encode()]


class LoraDeltaSource(CheckpointSource):
    """Only the adapter's dense deltas ``ΔW`` (float32), under base tensor names (no base
    needed). DoRA adapters are refused: their delta depends on the base weights."""

    def __init__(self, adapter_dir: str | Path, label: str | None = None):
        self.adapter = LoraAdapter(adapter_dir)
        self.path = self.adapter.path
        self.label = label or self.path.name
        if self.adapter.is_dora:
            raise CheckpointError(
                f"{self.path}: a DoRA adapter's delta m·(W+ΔW)/‖W+ΔW‖ - W depends on the base "
                "weights; open it with its base model (e.g. `wsviz info BASE ADAPTER`, "
                "ModelSet.open(BASE, [ADAPTER]))")
        self._infos = {}
        for module, mod in self.adapter.modules.items():
            name = f"{module}.weight"
            self._infos[name] = TensorInfo(name, self.adapter.delta_shape(module), torch.float32)
            if mod.bias:
                bname = f"{module}.bias"
                shape = tuple(self.adapter._file.info(mod.bias).shape)
                self._infos[bname] = TensorInfo(bname, shape, torch.float32)

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def files(self) -> list[Path]:
        return self.adapter.files()

    def _read(self, name: str) -> torch.Tensor:
        return self.adapter.delta(name)

    def _fingerprint_parts(self) -> list[bytes]:
        return [*self.adapter._file._fingerprint_parts(),
                json.dumps(self.adapter.config, sort_keys=True, default=str).encode()]
