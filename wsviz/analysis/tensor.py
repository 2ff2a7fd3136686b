"""All metrics of one tensor of a model set: table rows, and optionally its LayerDetail.

This is the unit the streaming engine loops over: it holds the base tensor, the n fine-tuned
tensors and their deltas of *one* tensor name at a time, on the chosen device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from wsviz.analysis.detail import LayerDetail
from wsviz.analysis.settings import AnalysisSettings
from wsviz.compute import conflicts as C
from wsviz.compute import deltas as D
from wsviz.compute import masks as MK
from wsviz.compute import spectra as S
from wsviz.compute import subspace as U

Row = tuple  # (layer, block, kind, group, model, metric, value, note)
NAN = float("nan")


@dataclass
class TensorResult:
    """Output of :func:`analyze_tensor`: table ``rows``, the tensor's contribution to the
    whole-model task-vector Gram matrix (``gram`` ``[n, n]`` float64) and CountSketch
    (``sketch`` ``[n, sketch_dim]``), and the ``detail`` if it was requested."""

    rows: list[Row] = field(default_factory=list)
    gram: Tensor | None = None
    sketch: Tensor | None = None
    detail: LayerDetail | None = None


def _svd_plan(shape: tuple[int, ...], settings: AnalysisSettings) -> tuple[str, str]:
    m = min(shape[0], shape[1])
    mode = settings.svd_mode
    note = ""
    if mode == "auto":
        mode = "lowrank" if m > settings.max_exact_dim else "gram"
    if mode == "lowrank":
        note = f"top-{min(m, settings.lowrank_k)} singular values only (randomized SVD)"
    return mode, note


def _spectra(keys: list[str], get, shape, mode: str, settings: AnalysisSettings,
             dev) -> dict:
    """Singular values of several same-shape weights (``get(key)`` builds one), by ``mode``
    (from :func:`_svd_plan`).

    On CUDA, matrices are stacked into batched Gram/eigvalsh calls of at most
    ``settings.batch_bytes`` float64 bytes; on CPU they are done one at a time with a streamed
    float64 Gram (so host memory never holds more than one extra copy).
    """
    out: dict[str, Tensor] = {}
    probe = S.as_matrices(torch.empty(shape, device="meta"))
    b, r, c = probe.shape
    per_bytes = b * (r * c * 8 + min(r, c) ** 2 * 8)
    budget = settings.batch_bytes
    if dev.type == "cuda" and not budget:
        budget = torch.cuda.mem_get_info(dev)[0] // 8
    step = 1 if dev.type != "cuda" else max(1, budget // max(per_bytes, 1))
    for start in range(0, len(keys), step):
        group = keys[start:start + step]
        if len(group) == 1:
            mats = S.as_matrices(get(group[0]))
        else:
            mats = torch.cat([S.as_matrices(get(k)) for k in group], 0)
        sv = S.batched_singular_values(mats, mode=mode, k=settings.lowrank_k).cpu()
        del mats
        sv = sv.reshape(len(group), -1)
        for i, k in enumerate(group):
            out[k] = torch.sort(sv[i], descending=True).values
    return out


def _model_prefix(key: str) -> tuple[str, str]:
    """Spectrum key -> (table ``model``, metric prefix): ``"delta:a"`` -> ``("a", "delta_")``,
    ``"a"`` / ``"base"`` -> (itself, ``""``)."""
    if key.startswith("delta:"):
        return key[6:], "delta_"
    return key, ""


def load_deltas(modelset, name: str, device) -> tuple[Tensor, Tensor]:
    """``(base [*shape], deltas [n, *shape])`` of tensor ``name``, reading one model at a time
    into a preallocated buffer (peak: n + 2 copies of the tensor)."""
    base = modelset.get_base(name, device)
    labels = modelset.labels
    deltas = torch.empty((len(labels), *base.shape), dtype=base.dtype, device=base.device)
    for i, lab in enumerate(labels):
        m = modelset.get(lab, name, device)
        torch.sub(m, base, out=deltas[i])
        del m
    return base, deltas


def merge_dtype(modelset, name: str) -> torch.dtype | None:
    """The dtype a merge of tensor ``name`` computes in by default (mergekit without
    ``dtype``): the stored dtypes of base and models, promoted; None if unknown."""
    dt = None
    for src in [modelset.base, *modelset.models.values()]:
        try:
            d = src.info(src.aliases().get(name, name)).dtype
        except Exception:  # noqa: BLE001 - adapter views etc.: no stored dtype to follow
            return None
        if not d.is_floating_point:
            return None
        dt = d if dt is None else torch.promote_types(dt, d)
    return dt


def analyze_tensor(
    name: str,
    layer,
    base: Tensor,
    deltas: Tensor,
    labels: list[str],
    settings: AnalysisSettings,
    detail: bool = False,
    trim_dtype: torch.dtype | None = None,
) -> TensorResult:
    """Compute every enabled metric family for one tensor.

    Shapes: ``base`` ``[*shape]``, ``deltas`` ``[n, *shape]`` task vectors (same device,
    compute dtype); fine-tuned weights are rebuilt one at a time as ``base + deltas[i]``.
    ``trim_dtype``: the merge's compute dtype (:func:`merge_dtype`); the sign-conflict trim
    rounds the deltas to it, so it keeps exactly the entries a TIES merge keeps.
    ``layer`` is the parsed :class:`~wsviz.io.LayerName`. Never raises on degenerate values
    (zero / constant / 1-D): such metrics are NaN with a ``note``.
    """
    n = len(labels)
    dev = base.device
    out = TensorResult()
    rows = out.rows
    block = layer.block
    key = (name, block, layer.kind, layer.group)

    def add(model: str, metric: str, value, note: str = ""):
        v = float(value) if value is not None else NAN
        rows.append((*key, model, metric, v, note))

    shape = tuple(base.shape)

    def tuned(i: int) -> Tensor:
        return base + deltas[i]

    det = None
    if detail:
        det = LayerDetail(name=name, block=block, kind=layer.kind, group=layer.group,
                          shape=shape, labels=list(labels))
        out.detail = det
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

    # -- deltas -----------------------------------------------------------------------------
    if settings.has("deltas"):
        st = D.delta_stats(deltas, base, settings.zero_atol, settings.zero_rtol)
        for metric, vals in st.items():
            for i, lab in enumerate(labels):
                add(lab, metric, vals[i])
        g = D.gram(deltas)
        out.gram = g.cpu()
        cos = D.cosine_from_gram(g).cpu()
        norms = st["delta_fro"].cpu()
        for i, j in pairs:
            zero = norms[i] == 0 or norms[j] == 0
            add(f"{labels[i]}|{labels[j]}", "delta_cosine", cos[i, j],
                "zero task vector" if zero else "")
        out.sketch = D.count_sketch(deltas, settings.sketch_dim, name=name).cpu()
        if det is not None:
            det.delta_cosine = cos
            amax = float(deltas.abs().max()) if deltas.numel() else 0.0
            amax = amax if amax > 0 else 1.0
            edges = torch.linspace(-amax, amax, settings.hist_bins + 1, dtype=torch.float64)
            flat = deltas.reshape(n, -1).to(torch.float64).cpu()
            det.delta_hist_edges = edges
            det.delta_hist = torch.stack(
                [torch.histogram(flat[i], bins=edges).hist for i in range(n)]
            ).to(torch.int64)

    # -- spectra ----------------------------------------------------------------------------
    is_matrix = base.dim() >= 2 and min(base.shape[0], base.shape[1]) >= 1 and base.dim() <= 4
    if settings.has("spectra"):
        keys: list[str] = []
        if "base" in settings.spectra_of:
            keys.append("base")
        if "models" in settings.spectra_of:
            keys += list(labels)
        if "deltas" in settings.spectra_of:
            keys += [f"delta:{lab}" for lab in labels]
        index = {lab: i for i, lab in enumerate(labels)}

        def get(k: str) -> Tensor:
            if k == "base":
                return base
            if k.startswith("delta:"):
                return deltas[index[k[6:]]]
            return tuned(index[k])

        if not is_matrix:
            reason = f"{base.dim()}-D tensor: no spectrum"
            for k in keys:
                model, prefix = _model_prefix(k)
                for metric in S.SPECTRAL_METRICS:
                    add(model, prefix + metric, NAN, reason)
            if det is not None:
                det.notes.append(reason)
        elif keys:
            mode, lr_note = _svd_plan(shape, settings)
            svs = _spectra(keys, get, shape, mode, settings, dev)
            for k in keys:
                vals, notes, fit = S.spectral_metrics(svs[k])
                model, prefix = _model_prefix(k)
                for metric in S.SPECTRAL_METRICS:
                    note = notes.get(metric, "")
                    if lr_note and metric not in ("spectral_norm",):
                        note = f"{note}; {lr_note}" if note else lr_note
                    add(model, prefix + metric, vals[metric], note)
                if det is not None:
                    det.sv[k] = svs[k]
                    if fit is not None:
                        det.fits[k] = fit

    # -- sign conflicts ---------------------------------------------------------------------
    if settings.has("conflicts"):
        sc = C.sign_conflicts(deltas, density=settings.k, return_mask=det is not None,
                              dtype=trim_dtype)
        ov_note = "" if sc.overlap_frac > 0 else "no overlapping trimmed entries"
        add("all", "sign_conflict", sc.conflict_frac)
        add("all", "sign_conflict_overlap", sc.conflict_frac_overlap, ov_note)
        add("all", "sign_overlap", sc.overlap_frac)
        add("all", "ties_mass_lost", sc.mass_lost)
        for i, lab in enumerate(labels):
            add(lab, "ties_mass_lost", sc.mass_lost_per_model[i])
        for i, j in pairs:
            a = float(sc.agreement[i, j])
            add(f"{labels[i]}|{labels[j]}", "sign_agreement", a,
                "trimmed task vectors never overlap" if math.isnan(a) else "")
        if det is not None:
            det.sign_agreement = sc.agreement.cpu()
            det.conflict_map = C.pooled_map(sc.conflict_mask, settings.map_size).cpu()
            det.conflicts = {
                "conflict_frac": sc.conflict_frac,
                "conflict_frac_overlap": sc.conflict_frac_overlap,
                "overlap_frac": sc.overlap_frac,
                "mass_lost": sc.mass_lost,
            }
            det.mass_lost_per_model = sc.mass_lost_per_model.cpu()

    two_d = base.dim() == 2 and min(shape) >= 2
    # -- intruder dimensions ----------------------------------------------------------------
    if settings.has("intruders"):
        if not two_d:
            for lab in labels:
                add(lab, "intruders", NAN, f"{base.dim()}-D tensor: no singular vectors")
        elif float(base.abs().max()) == 0.0:
            for lab in labels:
                add(lab, "intruders", NAN, "zero base matrix: no singular vectors")
        else:
            base_u, _ = U.left_singular_vectors(base, None)
            for i, lab in enumerate(labels):
                if float(deltas[i].abs().max()) == 0.0:
                    add(lab, "intruders", 0.0, "model equals base")
                    add(lab, "intruder_min_cos", 1.0, "model equals base")
                    continue
                r = U.intruder_dimensions(base, tuned(i), settings.intruder_k,
                                          settings.intruder_eps, base_u=base_u)
                add(lab, "intruders", r.count)
                add(lab, "intruder_min_cos", r.max_cos.min())
                if det is not None:
                    det.intruders[lab] = U.Intruders(
                        r.max_cos.cpu(), r.base_index.cpu(), r.is_intruder.cpu(), r.sv.cpu(),
                        r.count, r.k, r.eps)

    # -- task subspaces ---------------------------------------------------------------------
    if settings.has("subspace") and n >= 2:
        if not two_d:
            for i, j in pairs:
                add(f"{labels[i]}|{labels[j]}", "subspace_overlap", NAN,
                    f"{base.dim()}-D tensor: no subspace")
        else:
            us = []
            for i in range(n):
                if float(deltas[i].abs().max()) == 0.0:
                    us.append(None)
                else:
                    us.append(U.left_singular_vectors(deltas[i], settings.subspace_k)[0])
            ov = torch.full((n, n), NAN, dtype=torch.float64)
            for i in range(n):
                if us[i] is not None:
                    ov[i, i] = 1.0
            for i, j in pairs:
                if us[i] is None or us[j] is None:
                    add(f"{labels[i]}|{labels[j]}", "subspace_overlap", NAN, "zero task vector")
                    continue
                pc = U.principal_cosines(us[i], us[j]).cpu()
                v = float((pc * pc).mean())
                ov[i, j] = ov[j, i] = v
                add(f"{labels[i]}|{labels[j]}", "subspace_overlap", v)
                if det is not None:
                    det.principal_cosines[f"{labels[i]}|{labels[j]}"] = pc
            if det is not None:
                det.subspace_overlap = ov

    # -- masks ------------------------------------------------------------------------------
    if settings.has("masks"):
        s = settings.sparsity
        mb = MK.magnitude_mask(base, s)
        mm = []
        for i in range(n):  # base + Δ built one tensor-sized buffer at a time
            a = torch.add(base, deltas[i])
            mm.append(MK.magnitude_mask(a, s))
            del a
        for i, lab in enumerate(labels):
            add(lab, "mask_iou_base", MK.mask_iou(mm[i], mb))
        for i, j in pairs:
            add(f"{labels[i]}|{labels[j]}", "mask_iou", MK.mask_iou(mm[i], mm[j]))
    return out
