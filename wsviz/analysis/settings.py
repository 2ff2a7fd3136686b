"""Settings of an analysis run (part of the cache key)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from wsviz.errors import WsvizError

#: metric families :func:`wsviz.analysis.analyze` can compute
FAMILIES = ("deltas", "spectra", "conflicts", "intruders", "subspace", "masks")

#: bump when table contents change meaning, to invalidate old caches
ANALYSIS_VERSION = 2


@dataclass(frozen=True)
class AnalysisSettings:
    """What :func:`~wsviz.analysis.analyze` computes and how.

    - ``k``: TIES trim density for sign conflicts — each task vector keeps its top ``k``
      fraction of entries by magnitude (default 0.2 = TIES' 20 %).
    - ``intruder_k`` / ``intruder_eps``: top-k tuned left singular vectors tested, and the
      max-|cos| threshold under which one is an intruder (Shuttleworth et al.: 10, 0.5).
    - ``subspace_k``: rank of the task-delta subspaces compared by principal angles.
    - ``sparsity``: sparsity of the magnitude masks whose IoU the ``masks`` family reports.
    - ``families``: subset of :data:`FAMILIES` to compute.
    - ``spectra_of``: which matrices get spectra: any of ``"base"``, ``"models"``, ``"deltas"``.
    - ``svd_mode``: ``"auto"`` (Gram eigvalsh in float64, randomized top-``lowrank_k`` above
      ``max_exact_dim``), ``"exact"`` (svdvals), ``"gram"``, ``"lowrank"``; see
      :mod:`wsviz.compute.spectra` for the error each admits.
    - ``max_exact_dim``: min(rows, cols) above which ``auto`` switches to ``lowrank``.
    - ``lowrank_k``: number of singular values kept by the low-rank path.
    - ``batch_bytes``: float64 bytes per batched Gram/eigvalsh call on CUDA (0 = auto:
      1/8 of the free GPU memory); on CPU matrices are done one at a time.
    - ``zero_atol`` / ``zero_rtol``: an entry of Δ is "near zero" if ``|Δ| <= atol + rtol·|W0|``.
    - ``sketch_dim``: width of the CountSketch task-vector matrix for the task map.
    - ``hist_bins``: bins of the per-layer delta histogram (detail only).
    - ``map_size``: max side of the pooled sign-conflict map (detail only).
    """

    k: float = 0.2
    intruder_k: int = 10
    intruder_eps: float = 0.5
    subspace_k: int = 10
    sparsity: float = 0.5
    families: tuple[str, ...] = FAMILIES
    spectra_of: tuple[str, ...] = ("base", "models", "deltas")
    svd_mode: str = "auto"
    max_exact_dim: int = 16384
    lowrank_k: int = 256
    batch_bytes: int = 0
    zero_atol: float = 1e-8
    zero_rtol: float = 1e-5
    sketch_dim: int = 4096
    hist_bins: int = 101
    map_size: int = 256

    def __post_init__(self):
        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise WsvizError(f"unknown metric families {bad}; choose from {list(FAMILIES)}")
        if not 0.0 < float(self.k) <= 1.0:
            raise WsvizError(f"k={self.k!r}: the trim density must be in (0, 1]")
        if not 0.0 <= float(self.sparsity) <= 1.0:
            raise WsvizError(f"sparsity={self.sparsity!r} must be in [0, 1]")
        if self.svd_mode not in ("auto", "exact", "gram", "lowrank"):
            raise WsvizError(
                f"svd_mode={self.svd_mode!r}; use 'auto', 'exact', 'gram' or 'lowrank'"
            )
        if self.intruder_k < 1 or self.subspace_k < 1:
            raise WsvizError("intruder_k and subspace_k must be >= 1")
        object.__setattr__(self, "families", tuple(self.families))
        object.__setattr__(self, "spectra_of", tuple(self.spectra_of))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AnalysisSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def key(self) -> str:
        """Stable hash of the settings (and :data:`ANALYSIS_VERSION`) for the cache key."""
        blob = json.dumps({"v": ANALYSIS_VERSION, **self.to_dict()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def has(self, family: str) -> bool:
        return family in self.families
