"""Names and one-line definitions of every metric in :attr:`AnalysisResult.table`.

Spectral metrics appear for ``model="base"`` / a label (the weight itself) and, prefixed with
``delta_``, for a label's task vector ``Δ = W_model - W_base``.
"""

from __future__ import annotations

METRIC_DOCS: dict[str, str] = {
    # deltas (model = label)
    "delta_fro": "||Δ||_F, Frobenius norm of the task vector",
    "delta_rel": "||Δ||_F / ||W_base||_F",
    "delta_mean_abs": "mean |Δ|",
    "delta_max_abs": "max |Δ|",
    "delta_frac_zero": "fraction of entries with |Δ| <= 1e-8 + 1e-5·|W_base| (unchanged)",
    "delta_cosine": "(pair a|b) cosine similarity of the two task vectors of this tensor",
    # spectra (model = base / label; delta_ prefix for the task vector)
    "spectral_norm": "σ_1, largest singular value",
    "stable_rank": "Σσ² / σ_1² (WeightWatcher stable_rank)",
    "effective_rank": "Roy–Vetterli effective rank exp(H(σ/Σσ))",
    "rank90": "number of top singular values holding 90 % of Σσ²",
    "rank99": "number of top singular values holding 99 % of Σσ²",
    "alpha": "power-law exponent of the ESD λ=σ² (WeightWatcher fit: MLE, KS-chosen xmin)",
    "alpha_weighted": "alpha · log10(λ_max)",
    "xmin": "lower cutoff λ_min of the power-law tail",
    "ks_distance": "Kolmogorov–Smirnov distance D of the power-law fit",
    "num_pl_spikes": "eigenvalues in the fitted tail (λ >= xmin)",
    "log_norm": "log10(Σλ) = log10(||W||_F²)",
    "log_spectral_norm": "log10(λ_max)",
    "log_alpha_norm": "log10(Σ λ^alpha)",
    # conflicts
    "sign_conflict": "(all) fraction of coordinates where >=2 trimmed task vectors are "
                     "non-zero with disagreeing signs",
    "sign_conflict_overlap": "(all) conflicting / overlapping coordinates",
    "sign_overlap": "(all) fraction of coordinates where >=2 trimmed task vectors are non-zero",
    "ties_mass_lost": "share of trimmed |Δ| mass whose sign loses TIES' election "
                      "(all: over models; label: of that model's mass)",
    "sign_agreement": "(pair a|b) same-sign fraction where both trimmed task vectors are non-zero",
    # subspaces
    "intruders": "top-k left singular vectors of W_model with max |cos| < eps against all of "
                 "W_base's (intruder dimensions)",
    "intruder_min_cos": "smallest of those max |cos| values (low = strong intruder)",
    "subspace_overlap": "(pair a|b) mean cos² of principal angles between the top-k left "
                        "singular subspaces of the two task vectors",
    # masks
    "mask_iou_base": "IoU of the magnitude masks (at settings.sparsity) of the model and the base",
    "mask_iou": "(pair a|b) IoU of the two models' magnitude masks",
}


def metric_doc(metric: str) -> str:
    """Definition of ``metric`` (``delta_``-prefixed spectral names included)."""
    if metric in METRIC_DOCS:
        return METRIC_DOCS[metric]
    if metric.startswith("delta_") and metric[6:] in METRIC_DOCS:
        return METRIC_DOCS[metric[6:]] + " — of the task vector Δ"
    return ""
