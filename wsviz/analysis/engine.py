"""Streaming analysis of a model set: one tensor at a time -> tidy table (+ disk cache)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from wsviz.analysis.detail import LayerDetail
from wsviz.analysis.settings import AnalysisSettings
from wsviz.analysis.tensor import analyze_tensor, load_deltas, merge_dtype
from wsviz.analysis.tidy import tidy_table
from wsviz.compute import deltas as D
from wsviz.compute.device import resolve_device  # noqa: F401 - re-exported
from wsviz.errors import OutputError, WsvizError
from wsviz.io.outputs import atomic_write, check_output

COLUMNS = ["layer", "block", "kind", "group", "model", "metric", "value", "note"]

ProgressArg = bool | Callable[[int, int, str], None]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache directory: ``cache_dir``, else ``$WSVIZ_CACHE_DIR``, else ``~/.cache/wsviz``."""
    from wsviz.io.filehash import cache_root as _root

    return _root(cache_dir)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Cache entries: atomic, umask modes, dead writers' temp files swept
    (:func:`wsviz.io.outputs.atomic_write`)."""
    atomic_write(path, write, force=True)


@dataclass
class TaskVectors:
    """Task vectors of a model set as a matrix, for a task map (PCA / UMAP / MDS).

    - ``labels``: the n model labels (rows);
    - ``matrix``: float32 ``[n, d]``: the concatenated task vectors when the model has at most
      ``max_dims`` parameters (``method="exact"``), otherwise their CountSketch
      (``method="countsketch"``): every coordinate hashed, with a random sign, into one of
      ``d`` buckets, seeded per tensor name — inner products and cosines are preserved in
      expectation with standard deviation ~``sqrt(2/d)·|x||y|``;
    - ``cosine``: float64 ``[n, n]`` *exact* whole-model cosine similarity of task vectors;
    - ``norms``: float64 ``[n]`` exact whole-model ``||Δ||_F``.
    """

    labels: list[str]
    matrix: Tensor
    cosine: Tensor
    norms: Tensor
    method: str

    def cosine_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.cosine.numpy(), index=self.labels, columns=self.labels)


def _pairs_frame(labels: list[str], g: Tensor) -> pd.DataFrame:
    cos = D.cosine_from_gram(g)
    norms = g.diagonal().clamp_min(0).sqrt()
    recs = []
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            if i < j:
                recs.append({"a": a, "b": b, "cosine": float(cos[i, j]),
                             "dot": float(g[i, j]), "norm_a": float(norms[i]),
                             "norm_b": float(norms[j])})
    return pd.DataFrame(recs, columns=["a", "b", "cosine", "dot", "norm_a", "norm_b"])


class AnalysisResult:
    """Result of :func:`analyze`.

    - ``table``: tidy DataFrame with columns ``layer, block, kind, group, model, metric,
      value, note`` — one row per (tensor, model, metric). ``model`` is ``"base"``, a model
      label, ``"a|b"`` for a pair metric or ``"all"`` for an aggregate over the models;
      ``note`` says why a value is NaN (e.g. ``"1-D tensor: no spectrum"``) or how it was
      approximated. See :data:`METRIC_DOCS` for every metric name.
    - ``pairs``: whole-model task-vector similarity, columns ``a, b, cosine, dot, norm_a,
      norm_b`` (from the exact Gram matrix summed over all tensors).
    - ``task_vectors``: :class:`TaskVectors` (CountSketch of width ``settings.sketch_dim``).
    - :meth:`detail` returns the :class:`~wsviz.analysis.detail.LayerDetail` of one tensor.
    """

    def __init__(self, table, pairs, task_vectors, labels, settings, fingerprint,
                 modelset=None, cache_path: Path | None = None, device=None, from_cache=False):
        self.table: pd.DataFrame = table
        self.pairs: pd.DataFrame = pairs
        self.task_vectors: TaskVectors | None = task_vectors
        self.labels: list[str] = list(labels)
        self.settings: AnalysisSettings = settings
        self.fingerprint: str = fingerprint
        self.modelset = modelset
        self.cache_path = cache_path
        self.device = device
        self.from_cache = from_cache
        self._details: dict[str, LayerDetail] = {}

    # -- views -----------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Tensor names in model order."""
        return list(dict.fromkeys(self.table["layer"]))

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.table["metric"]))

    def matrix(self, model: str, metrics: Sequence[str] | None = None) -> pd.DataFrame:
        """Layers x metrics wide frame of one ``model`` (a label, ``"base"``, ``"a|b"``, ``"all"``)."""
        t = self.table[self.table["model"] == model]
        if metrics is not None:
            t = t[t["metric"].isin(list(metrics))]
        w = t.pivot_table(index="layer", columns="metric", values="value", sort=False,
                          dropna=False)
        return w.reindex([x for x in self.layers if x in w.index])

    def detail(self, layer: str, device=None) -> LayerDetail:
        """Full per-layer detail of tensor ``layer`` (computed on first use, then cached in
        memory and on disk). Raises :class:`WsvizError` for an unknown tensor name or when the
        result was loaded without its model set."""
        if layer not in self._details:
            self._details[layer] = compute_detail(
                self.modelset, layer, self.settings,
                device if device is not None else self.device, self.cache_path)
        return self._details[layer]

    # -- export ----------------------------------------------------------------------------
    def to_parquet(self, path, overwrite: bool = False) -> Path:
        """Write ``table`` to a parquet file atomically; refuses to overwrite unless asked
        and refuses a path that is, contains or lies inside a checkpoint of the model set
        (:class:`~wsviz.errors.OutputError`, also for disk full)."""
        return self._write(path, overwrite, lambda p: self.table.to_parquet(p, index=False))

    def to_csv(self, path, overwrite: bool = False) -> Path:
        """Write ``table`` to a CSV file atomically (same rules as :meth:`to_parquet`)."""
        return self._write(path, overwrite, lambda p: self.table.to_csv(p, index=False))

    def _write(self, path, overwrite, fn) -> Path:
        inputs = self.modelset.files() if self.modelset is not None else []
        path = check_output(path, inputs, force=overwrite, kind="file",
                            hint="pass overwrite=True (--force) to replace it")
        atomic_write(path, fn, force=overwrite)
        return path

    def __repr__(self) -> str:
        return (f"AnalysisResult({len(self.layers)} tensors x {len(self.labels)} models, "
                f"{len(self.table)} rows{', from cache' if self.from_cache else ''})")


# -- detail (de)serialisation (torch.load(weights_only=True)-safe) --------------------------
def detail_to_dict(d: LayerDetail) -> dict:
    out = dict(d.__dict__)
    out["shape"] = list(d.shape)
    out["fits"] = {k: dict(f.__dict__) for k, f in d.fits.items()}
    out["intruders"] = {k: dict(v.__dict__) for k, v in d.intruders.items()}
    return out


def detail_from_dict(x: dict) -> LayerDetail:
    from wsviz.compute.powerlaw import PowerLawFit
    from wsviz.compute.subspace import Intruders

    x = dict(x)
    x["shape"] = tuple(x["shape"])
    x["fits"] = {k: PowerLawFit(**v) for k, v in x["fits"].items()}
    x["intruders"] = {k: Intruders(**v) for k, v in x["intruders"].items()}
    return LayerDetail(**x)


# -- the engine ------------------------------------------------------------------------------
def _malloc_trim():
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim() if os.name == "posix" else None


def _release_memory() -> None:
    """Give freed heap pages back to the OS between tensors (glibc keeps freed blocks below
    its mmap threshold resident, which would let RSS creep up over thousands of tensors)."""
    if _TRIM is not None:
        _TRIM(0)


def _progress(progress: ProgressArg, total: int):
    if callable(progress):
        return None, progress
    if progress:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="analyze", unit="tensor", leave=False), None
    return None, None


def table_from_rows(rows: list[tuple]) -> pd.DataFrame:
    """The tidy table (:data:`COLUMNS`, nullable-int ``block``, str labels) of analysis rows
    (:func:`wsviz.analysis.tidy.tidy_table`)."""
    return tidy_table(rows, COLUMNS)


def compute_detail(modelset, layer: str, settings: AnalysisSettings, device,
                   cache_path: Path | None) -> LayerDetail:
    """Full :class:`LayerDetail` of tensor ``layer`` (read from / written to
    ``cache_path/detail`` when given). Raises :class:`WsvizError` for an unknown tensor name
    or a missing model set."""
    path = None
    if cache_path is not None:
        h = hashlib.sha256(layer.encode()).hexdigest()[:20]
        path = cache_path / "detail" / f"{h}.pt"
        if path.is_file():
            try:
                return detail_from_dict(torch.load(path, weights_only=True))
            except Exception:  # noqa: BLE001 - corrupt cache entry: recompute
                pass
    ms = modelset
    if ms is None:
        raise WsvizError("this analysis result has no model set attached; re-run analyze()")
    if layer not in ms.names:
        raise WsvizError(f"no tensor named {layer!r} in the model set "
                         f"({len(ms.names)} tensors, e.g. {ms.names[:3]})")
    dev = resolve_device(device)
    base, deltas = load_deltas(ms, layer, dev)
    det = analyze_tensor(layer, ms.layer(layer), base, deltas, ms.labels, settings,
                         detail=True, trim_dtype=merge_dtype(ms, layer)).detail
    if path is not None:
        try:
            _atomic_write(path, lambda p: torch.save(detail_to_dict(det), p))
        except (OSError, OutputError):
            pass
    return det


def task_vector_matrix(
    modelset,
    names: Sequence[str] | None = None,
    max_dims: int = 4096,
    device=None,
    seed: int = 0,
) -> TaskVectors:
    """Task vectors of ``modelset`` as a ``[n_models, d]`` matrix for a task map.

    If the selected tensors (``names``, default all) hold at most ``max_dims`` entries the
    matrix is the exact concatenation (``d`` = that count); otherwise a CountSketch of width
    ``d = max_dims`` (see :class:`TaskVectors`). The cosine matrix is always exact. Streams one
    tensor at a time.
    """
    dev = resolve_device(device)
    todo = list(names) if names is not None else list(modelset.names)
    total = sum(modelset.info(x).numel for x in todo)
    n = len(modelset.labels)
    g = torch.zeros(n, n, dtype=torch.float64)
    exact = total <= max_dims
    parts = []
    sk = torch.zeros(n, max_dims, dtype=torch.float32)
    for name in todo:
        d = modelset.deltas(name, dev)
        g += D.gram(d).cpu()
        if exact:
            parts.append(d.reshape(n, -1).float().cpu())
        else:
            sk += D.count_sketch(d, max_dims, name=name, seed=seed).cpu()
    mat = torch.cat(parts, 1) if exact and parts else (sk if not exact else torch.zeros(n, 0))
    return TaskVectors(labels=list(modelset.labels), matrix=mat, cosine=D.cosine_from_gram(g),
                       norms=g.diagonal().clamp_min(0).sqrt(),
                       method="exact" if exact else "countsketch")
