"""Per-layer detail arrays (fetched on demand by the layer views)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from wsviz.compute.powerlaw import PowerLawFit
from wsviz.compute.subspace import Intruders


@dataclass
class LayerDetail:
    """Everything the layer-detail views draw for one tensor (all tensors on CPU).

    ``n`` = number of fine-tuned models, in the order of ``labels``. Spectrum keys are
    ``"base"``, each model label, and ``"delta:<label>"`` for its task vector.

    Identity
        - ``name``: tensor name; ``block`` (int or None), ``kind``, ``group``: as in the table.
        - ``shape``: tensor shape; ``labels``: list of the n model labels.

    Spectra (only for tensors with >= 2 dims; empty dicts otherwise, reason in ``notes``)
        - ``sv[key]``: float64 ``[p]`` singular values, descending (p = min(rows, cols), pooled
          over conv slices; only the top ``lowrank_k`` when the low-rank path was used).
        - ``fits[key]``: :class:`~wsviz.compute.powerlaw.PowerLawFit` of the ESD ``λ = sv²``
          (``alpha``, ``xmin``, ``D``, ``sigma``, ``n_tail``; NaN + ``note`` when undefined).
        - :meth:`esd` gives ``λ`` ascending; :meth:`esd_histogram` a log-binned density.

    Task vectors
        - ``delta_hist_edges``: float64 ``[bins+1]`` common bin edges, symmetric around 0;
        - ``delta_hist``: int64 ``[n, bins]`` histogram counts of each model's Δ entries;
        - ``delta_cosine``: float64 ``[n, n]`` cosine similarity of the flattened Δs.

    Sign conflicts (after trimming each Δ to its top ``k`` fraction, see compute.conflicts)
        - ``conflict_map``: float32 ``[h, w]`` (h, w <= ``map_size``) fraction of conflicting
          coordinates per block of the ``[rows, cols]`` view (1-D tensors: one row);
        - ``sign_agreement``: float64 ``[n, n]`` same-sign fraction on co-non-zero coordinates
          (NaN where two trimmed Δs never overlap);
        - ``conflicts``: dict of scalars ``conflict_frac``, ``conflict_frac_overlap``,
          ``overlap_frac``, ``mass_lost``; ``mass_lost_per_model``: float64 ``[n]``.

    Subspaces (2-D tensors only)
        - ``intruders[label]``: :class:`~wsviz.compute.subspace.Intruders` with ``max_cos``
          ``[k]`` (max |cos| of each top-k tuned left singular vector with any base one),
          ``base_index`` ``[k]``, ``is_intruder`` bool ``[k]``, ``sv`` ``[k]``, ``count``;
        - ``subspace_overlap``: float64 ``[n, n]`` mean cos² of the principal angles between the
          top-``subspace_k`` left singular subspaces of two Δs (NaN for a zero Δ);
        - ``principal_cosines["a|b"]``: float64 ``[subspace_k]`` the cosines themselves.

    ``notes``: list of strings explaining anything skipped.
    """

    name: str
    block: int | None
    kind: str
    group: str
    shape: tuple[int, ...]
    labels: list[str]
    sv: dict[str, Tensor] = field(default_factory=dict)
    fits: dict[str, PowerLawFit] = field(default_factory=dict)
    delta_hist_edges: Tensor | None = None
    delta_hist: Tensor | None = None
    delta_cosine: Tensor | None = None
    conflict_map: Tensor | None = None
    sign_agreement: Tensor | None = None
    conflicts: dict[str, float] = field(default_factory=dict)
    mass_lost_per_model: Tensor | None = None
    intruders: dict[str, Intruders] = field(default_factory=dict)
    subspace_overlap: Tensor | None = None
    principal_cosines: dict[str, Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def esd(self, key: str = "base") -> Tensor:
        """Eigenvalues ``λ = σ²`` of spectrum ``key``, ascending, float64 ``[p]``."""
        return torch.sort(self.sv[key].pow(2)).values

    def esd_histogram(
        self, key: str = "base", bins: int = 100, thresh: float = 1e-12
    ) -> tuple[Tensor, Tensor]:
        """Log-binned ESD density: ``(edges [bins+1], density [bins])`` over ``λ > thresh``.

        Density is normalised so that ``Σ density · Δedge = 1`` (as in WeightWatcher's plots).
        """
        lam = self.esd(key)
        lam = lam[lam > thresh]
        if lam.numel() == 0:
            return torch.zeros(bins + 1, dtype=torch.float64), torch.zeros(bins, dtype=torch.float64)
        lo, hi = float(lam.min().log10()), float(lam.max().log10())
        if hi <= lo:
            hi = lo + 1e-6
        edges = torch.logspace(lo, hi, bins + 1, dtype=torch.float64)
        counts = torch.histogram(lam, bins=edges).hist
        dens = counts / (counts.sum() * (edges[1:] - edges[:-1]))
        return edges, dens
