"""A base model aligned with N fine-tuned descendants, read one tensor at a time.

Alignment matches tensor names and shapes; tied / aliased tensors are analysed once;
everything that does not match is reported by name in an :class:`AlignmentReport`.
Non-parameter buffers (integer tensors such as BERT's ``embeddings.position_ids``, and
``inv_freq`` / ``num_batches_tracked`` / ``masked_bias``) that a fine-tune does not save are
not a misalignment: that model reads the base's buffer (its delta is zero).
Tensors are returned in the compute dtype (fp32 by default, whatever the storage dtype).
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wsviz.errors import AlignmentError, CheckpointError
from wsviz.io.layers import LayerName, parse_layer_name
from wsviz.io.open import open_source
from wsviz.io.source import CheckpointSource, TensorInfo
from wsviz.textsafe import escape_controls


@dataclass
class AlignmentReport:
    """What does not match between the base and each model (all by tensor name)."""

    base: str
    missing: dict[str, list[str]] = field(default_factory=dict)  # label -> names absent in model
    extra: dict[str, list[str]] = field(default_factory=dict)  # label -> names absent in base
    shape_mismatch: dict[str, list[tuple[str, tuple, tuple]]] = field(default_factory=dict)
    dtypes: dict[str, list[str]] = field(default_factory=dict)  # label -> storage dtypes
    tied: list[str] = field(default_factory=list)  # alias names analysed once
    buffers: dict[str, list[str]] = field(default_factory=dict)  # label -> base buffers it lacks
    excluded: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model has every base tensor with the base's shape."""
        return not any(self.missing.values()) and not any(self.shape_mismatch.values())

    def format(self, limit: int = 8) -> str:
        """Multi-line human-readable report."""
        lines = [f"alignment against the base ({self.base}): {'OK' if self.ok else 'MISMATCH'}"]

        def names(xs):
            more = f" (+{len(xs) - limit} more)" if len(xs) > limit else ""
            return ", ".join(escape_controls(x) for x in xs[:limit]) + more

        for label in sorted(set(self.missing) | set(self.extra) | set(self.shape_mismatch)
                            | set(self.buffers)):
            if self.missing.get(label):
                lines.append(f"  {label}: missing {len(self.missing[label])}: "
                             f"{names(self.missing[label])}")
            if self.shape_mismatch.get(label):
                sm = [f"{n} {tuple(b)} vs {tuple(m)}" for n, b, m in self.shape_mismatch[label]]
                lines.append(f"  {label}: shape mismatch {len(sm)}: {names(sm)}")
            if self.buffers.get(label):
                lines.append(f"  {label}: lacks {len(self.buffers[label])} buffer(s), read from "
                             f"the base: {names(self.buffers[label])}")
            if self.extra.get(label):
                lines.append(f"  {label}: extra (ignored) {len(self.extra[label])}: "
                             f"{names(self.extra[label])}")
        if self.tied:
            lines.append(f"  tied/aliased (analysed once): {names(self.tied)}")
        if self.excluded:
            lines.append(f"  excluded by pattern: {len(self.excluded)} tensors")
        if len({tuple(d) for d in self.dtypes.values()}) > 1:
            lines.append("  storage dtypes differ: " + "; ".join(
                f"{lab}={'/'.join(d)}" for lab, d in self.dtypes.items()) + " (computed in fp32)")
        return "\n".join(lines)


#: last name components of float tensors that are buffers, not parameters
BUFFER_LEAVES = ("position_ids", "inv_freq", "num_batches_tracked", "masked_bias")


def is_buffer(info: TensorInfo) -> bool:
    """True for a non-parameter buffer: a non-floating tensor (``position_ids``,
    ``num_batches_tracked``) or a float tensor named like one of :data:`BUFFER_LEAVES`."""
    return not info.dtype.is_floating_point or info.name.rsplit(".", 1)[-1] in BUFFER_LEAVES


class ModelSet:
    """Base + fine-tuned models aligned by tensor name.

    ``names`` is the list of tensors present (with equal shapes) in all models, in base
    order, without aliases and excluded names. With ``strict`` (default) any missing
    tensor or shape mismatch raises :class:`AlignmentError` carrying the report;
    otherwise such tensors are dropped from ``names`` and kept in ``report``.
    """

    def __init__(
        self,
        base: CheckpointSource,
        models: dict[str, CheckpointSource],
        *,
        exclude: Sequence[str] = (),
        strict: bool = True,
        dtype: torch.dtype = torch.float32,
    ):
        if not models:
            raise AlignmentError("a model set needs at least one fine-tuned model besides the base")
        self.base = base
        self.models = dict(models)
        self.dtype = dtype
        self.exclude = tuple(exclude)
        self.report = AlignmentReport(base=base.where())
        self._from_base: dict[str, set[str]] = {}
        self.names = self._align(strict)

    @classmethod
    def open(
        cls,
        base,
        finetuned: Sequence,
        labels: Sequence[str] | None = None,
        **kwargs,
    ) -> ModelSet:
        """Open ``base`` and each of ``finetuned`` with :func:`open_source` and align them.

        PEFT adapter directories among ``finetuned`` become ``base + ΔW`` views.
        Labels default to each source's label, made unique.
        """
        base_src = open_source(base)
        if labels is not None and len(labels) != len(finetuned):
            raise CheckpointError(
                f"got {len(labels)} labels for {len(finetuned)} fine-tuned models"
            )
        models: dict[str, CheckpointSource] = {}
        for i, ft in enumerate(finetuned):
            src = open_source(ft, base=base_src, label=labels[i] if labels else None)
            label = labels[i] if labels else src.label
            if label in models or label == "base":
                label = f"{label}_{i}"
            src.label = label
            models[label] = src
        return cls(base_src, models, **kwargs)

    # -- alignment -------------------------------------------------------------------------
    def _align(self, strict: bool) -> list[str]:
        rep = self.report
        base_infos = self.base.infos()
        base_aliases = self.base.aliases()
        names = []
        for n in base_infos:
            if n in base_aliases:
                rep.tied.append(n)
            elif any(fnmatch.fnmatchcase(n, p) for p in self.exclude):
                rep.excluded.append(n)
            else:
                names.append(n)
        keep = set(names)
        rep.dtypes["base"] = sorted({str(i.dtype).replace("torch.", "") for i in base_infos.values()})
        for label, src in self.models.items():
            infos = src.infos()
            aliases = src.aliases()
            rep.dtypes[label] = sorted({str(i.dtype).replace("torch.", "") for i in infos.values()})
            missing, mism, buffers = [], [], []
            for n in names:
                m_name = n if n in infos else aliases.get(n)
                if m_name is None or m_name not in infos:
                    (buffers if is_buffer(base_infos[n]) else missing).append(n)
                elif tuple(infos[m_name].shape) != tuple(base_infos[n].shape):
                    mism.append((n, base_infos[n].shape, infos[m_name].shape))
            extra = [
                n for n in infos
                if n not in base_infos and n not in base_aliases and n not in aliases
                and not any(fnmatch.fnmatchcase(n, p) for p in self.exclude)
            ]
            rep.missing[label], rep.shape_mismatch[label], rep.extra[label] = missing, mism, extra
            if buffers:
                rep.buffers[label] = buffers
                self._from_base[label] = set(buffers)
            keep -= set(missing) | {n for n, _, _ in mism}
        if strict and not rep.ok:
            raise AlignmentError(
                "the models do not align (open them with strict=False to use the common "
                "tensors only, or exclude patterns):\n" + rep.format(),
                report=rep,
            )
        return [n for n in names if n in keep]

    # -- access ----------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """Fine-tuned model labels, in the order given."""
        return list(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def info(self, name: str) -> TensorInfo:
        """Base metadata of tensor ``name``."""
        return self.base.info(name)

    def layer(self, name: str) -> LayerName:
        """Parsed block / kind / group of tensor ``name``."""
        return parse_layer_name(name)

    def num_params(self) -> int:
        """Elements over the aligned tensors (one model)."""
        return sum(self.base.info(n).numel for n in self.names)

    def get_base(self, name: str, device=None) -> torch.Tensor:
        """Base tensor ``name`` in the compute dtype on ``device``."""
        return self.base.get(name, device=device, dtype=self.dtype)

    def source(self, label: str | None, name: str) -> CheckpointSource:
        """The source tensor ``name`` of model ``label`` (None / ``"base"``: the base) is read
        from: the base for a buffer that model does not save."""
        if label is None or label == "base" or name in self._from_base.get(label, ()):
            return self.base
        if label not in self.models:
            raise CheckpointError(f"no model labelled {label!r}; labels are {self.labels}")
        return self.models[label]

    def get(self, label: str, name: str, device=None) -> torch.Tensor:
        """Tensor ``name`` of model ``label`` in the compute dtype on ``device``."""
        if label == "base":
            return self.get_base(name, device)
        if label not in self.models:
            raise CheckpointError(f"no model labelled {label!r}; labels are {self.labels}")
        if name in self._from_base.get(label, ()):
            return self.get_base(name, device)  # a buffer this model does not save
        return self.models[label].get(name, device=device, dtype=self.dtype)

    def stack(self, name: str, device=None) -> torch.Tensor:
        """``[n_models, *shape]`` stack of tensor ``name`` over the fine-tuned models."""
        return torch.stack([self.get(lab, name, device) for lab in self.models])

    def deltas(self, name: str, device=None) -> torch.Tensor:
        """Task vectors of tensor ``name``: ``[n_models, *shape]``, ``model - base``."""
        return self.stack(name, device) - self.get_base(name, device).unsqueeze(0)

    def delta(self, label: str, name: str, device=None) -> torch.Tensor:
        """Task vector of one model: ``model - base`` for tensor ``name``."""
        return self.get(label, name, device) - self.get_base(name, device)

    def files(self) -> list[Path]:
        """Every path the set reads (see :meth:`CheckpointSource.files`), for output checks."""
        out = list(self.base.files())
        for src in self.models.values():
            out.extend(p for p in src.files() if p not in out)
        return out

    def fingerprint(self) -> str:
        """Content key of the whole set: base, models (with labels), exclusions, dtype."""
        h = hashlib.sha256(self.base.fingerprint().encode())
        for label, src in self.models.items():
            h.update(f"|{label}={src.fingerprint()}".encode())
        h.update(f"|x={self.exclude}|{self.dtype}".encode())
        return h.hexdigest()[:32]

    def __repr__(self) -> str:
        return (f"ModelSet(base={self.base.label}, models={self.labels}, "
                f"{len(self.names)} tensors)")
