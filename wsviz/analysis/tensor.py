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
from wsviz.analysis.settings import FAMILIES, AnalysisSettings
from wsviz.compute import conflicts as C
from wsviz.compute import deltas as D
from wsviz.compute import masks as MK
from wsviz.compute import spectra as S
from wsviz.compute import subspace as U

Row = tuple  # (layer, block, kind, group, model, metric, value, note)
NAN = float("nan")


@dataclass
class TensorResult:
    """Output of :func:`analyze_tensor`: table ``rows`` (also split ``by_family``), the tensor's contribution to the
    whole-model task-vector Gram matrix (``gram`` ``[n, n]`` float64) and CountSketch
    (``sketch`` ``[n, sketch_dim]``), and the ``detail`` if it was requested."""

    rows: list[Row] = field(default_factory=list)
    by_family: dict[str, list[Row]] = field(default_factory=dict)
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


#: families that need no singular values: the first, fast pass of a progressive run
CHEAP_FAMILIES = ("deltas", "conflicts", "masks")
#: families built on singular values / vectors: the second pass, streamed layer by layer
SPECTRAL_FAMILIES = ("spectra", "intruders", "subspace")
#: stage name -> the families it computes
STAGES = {"cheap": CHEAP_FAMILIES, "spectral": SPECTRAL_FAMILIES}


@dataclass
class _Ctx:
    """One tensor's inputs, shared by the family functions: ``base`` ``[*shape]``, ``deltas``
    ``[n, *shape]``; ``add`` appends a row to the current family's list."""

    name: str
    layer: object
    base: Tensor
    deltas: Tensor
    labels: list[str]
    settings: AnalysisSettings
    det: LayerDetail | None
    trim_dtype: torch.dtype | None
    rows: list[Row] = field(default_factory=list)
    #: spectrum key -> singular values, key -> GramSVD: one Gram matrix per matrix shared by
    #: the spectral families (:func:`_shared_grams`); empty = each family computes its own
    svs: dict = field(default_factory=dict)
    gsvd: dict = field(default_factory=dict)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        n = len(self.labels)
        return [(i, j) for i in range(n) for j in range(i + 1, n)]

    def pair(self, i: int, j: int) -> str:
        return f"{self.labels[i]}|{self.labels[j]}"

    def add(self, model: str, metric: str, value, note: str = "") -> None:
        v = float(value) if value is not None else NAN
        ly = self.layer
        self.rows.append((self.name, ly.block, ly.kind, ly.group, model, metric, v, note))

    def tuned(self, i: int) -> Tensor:
        return self.base + self.deltas[i]

    @property
    def two_d(self) -> bool:
        return self.base.dim() == 2 and min(self.base.shape) >= 2


def analyze_tensor(
    name: str,
    layer,
    base: Tensor,
    deltas: Tensor,
    labels: list[str],
    settings: AnalysisSettings,
    detail: bool = False,
    trim_dtype: torch.dtype | None = None,
    stages: tuple[str, ...] = ("cheap", "spectral"),
) -> TensorResult:
    """Compute every enabled metric family of the given ``stages`` (:data:`STAGES`) for one
    tensor; rows come in :data:`~wsviz.analysis.settings.FAMILIES` order.

    Shapes: ``base`` ``[*shape]``, ``deltas`` ``[n, *shape]`` task vectors (same device,
    compute dtype); fine-tuned weights are rebuilt one at a time as ``base + deltas[i]``.
    ``trim_dtype``: the merge's compute dtype (:func:`merge_dtype`); the sign-conflict trim
    rounds the deltas to it, so it keeps exactly the entries a TIES merge keeps.
    ``layer`` is the parsed :class:`~wsviz.io.LayerName`. Never raises on degenerate values
    (zero / constant / 1-D): such metrics are NaN with a ``note``.
    """
    out = TensorResult()
    det = None
    if detail:
        det = LayerDetail(name=name, block=layer.block, kind=layer.kind, group=layer.group,
                          shape=tuple(base.shape), labels=list(labels))
        out.detail = det
    ctx = _Ctx(name, layer, base, deltas, list(labels), settings, det, trim_dtype)
    wanted = {f for s in stages for f in STAGES[s]}
    if "spectral" in stages:
        _shared_grams(ctx)
    for family in FAMILIES:
        if family in wanted and settings.has(family):
            ctx.rows = []
            _FAMILY_FNS[family](ctx, out)
            out.by_family[family] = ctx.rows
            out.rows.extend(ctx.rows)
    return out


def _get(ctx: _Ctx, key: str) -> Tensor:
    """The matrix behind a spectrum key: ``"base"``, a label (tuned) or ``"delta:<label>"``."""
    if key == "base":
        return ctx.base
    if key.startswith("delta:"):
        return ctx.deltas[ctx.labels.index(key[6:])]
    return ctx.tuned(ctx.labels.index(key))


def _shared_grams(ctx: _Ctx) -> None:
    """One float64 Gram matrix per 2-D matrix of the spectral stage, shared by its families
    (CPU, ``gram`` SVD plan, ``min(shape) <=`` :data:`~wsviz.compute.subspace.EXACT_SVD_MAX_DIM`):
    ``eigvalsh`` gives the spectra (the very values of the one-family path), ``eigh`` the
    singular vectors of the intruder test and the task subspaces, instead of an SVD of each
    ``[r, c]`` matrix. Fills ``ctx.svs`` / ``ctx.gsvd``; leaves them empty otherwise."""
    s, base = ctx.settings, ctx.base
    if (base.device.type != "cpu" or base.dim() != 2 or min(base.shape) < 2
            or min(base.shape) > U.EXACT_SVD_MAX_DIM
            or _svd_plan(tuple(base.shape), s)[0] != "gram"):
        return
    spec = _spectra_keys(ctx) if s.has("spectra") else []
    vec = []
    if s.has("intruders"):
        vec += ["base", *ctx.labels]
    if s.has("subspace") and len(ctx.labels) >= 2:
        vec += [f"delta:{lab}" for lab in ctx.labels]
    for key in dict.fromkeys(spec + vec):
        x = _get(ctx, key)
        g = S.gram_matrix(x, torch.float64)
        if key in spec:
            ev = S._eigvalsh(g.unsqueeze(0)).clamp_min_(0).sqrt_().flip(-1)
            ctx.svs[key] = torch.sort(ev.reshape(-1), descending=True).values
        if key in vec:
            ctx.gsvd[key] = U.gram_svd(x, g)
        del g, x


def _deltas(ctx: _Ctx, out: TensorResult) -> None:
    """Per-model delta statistics, pairwise task-vector cosines, Gram + CountSketch parts."""
    s, deltas, labels, det = ctx.settings, ctx.deltas, ctx.labels, ctx.det
    n = len(labels)
    st = D.delta_stats(deltas, ctx.base, s.zero_atol, s.zero_rtol)
    for metric, vals in st.items():
        for i, lab in enumerate(labels):
            ctx.add(lab, metric, vals[i])
    g = D.gram(deltas)
    out.gram = g.cpu()
    cos = D.cosine_from_gram(g).cpu()
    norms = st["delta_fro"].cpu()
    for i, j in ctx.pairs:
        zero = norms[i] == 0 or norms[j] == 0
        ctx.add(ctx.pair(i, j), "delta_cosine", cos[i, j], "zero task vector" if zero else "")
    out.sketch = D.count_sketch(deltas, s.sketch_dim, name=ctx.name).cpu()
    if det is not None:
        det.delta_cosine = cos
        amax = float(deltas.abs().max()) if deltas.numel() else 0.0
        amax = amax if amax > 0 else 1.0
        edges = torch.linspace(-amax, amax, s.hist_bins + 1, dtype=torch.float64)
        flat = deltas.reshape(n, -1).to(torch.float64).cpu()
        det.delta_hist_edges = edges
        det.delta_hist = torch.stack(
            [torch.histogram(flat[i], bins=edges).hist for i in range(n)]
        ).to(torch.int64)


def _spectra_keys(ctx: _Ctx) -> list[str]:
    keys: list[str] = []
    if "base" in ctx.settings.spectra_of:
        keys.append("base")
    if "models" in ctx.settings.spectra_of:
        keys += list(ctx.labels)
    if "deltas" in ctx.settings.spectra_of:
        keys += [f"delta:{lab}" for lab in ctx.labels]
    return keys


def _spectra_family(ctx: _Ctx, out: TensorResult) -> None:
    """Singular values and ESD metrics of the base, the models and the deltas."""
    base, det = ctx.base, ctx.det
    keys = _spectra_keys(ctx)
    index = {lab: i for i, lab in enumerate(ctx.labels)}

    def get(k: str) -> Tensor:
        if k == "base":
            return base
        if k.startswith("delta:"):
            return ctx.deltas[index[k[6:]]]
        return ctx.tuned(index[k])

    if not (base.dim() >= 2 and min(base.shape[0], base.shape[1]) >= 1 and base.dim() <= 4):
        reason = f"{base.dim()}-D tensor: no spectrum"
        for k in keys:
            model, prefix = _model_prefix(k)
            for metric in S.SPECTRAL_METRICS:
                ctx.add(model, prefix + metric, NAN, reason)
        if det is not None:
            det.notes.append(reason)
        return
    if not keys:
        return
    mode, lr_note = _svd_plan(tuple(base.shape), ctx.settings)
    svs = ctx.svs or _spectra(keys, get, tuple(base.shape), mode, ctx.settings, base.device)
    for k in keys:
        vals, notes, fit = S.spectral_metrics(svs[k])
        model, prefix = _model_prefix(k)
        for metric in S.SPECTRAL_METRICS:
            note = notes.get(metric, "")
            if lr_note and metric not in ("spectral_norm",):
                note = f"{note}; {lr_note}" if note else lr_note
            ctx.add(model, prefix + metric, vals[metric], note)
        if det is not None:
            det.sv[k] = svs[k]
            if fit is not None:
                det.fits[k] = fit


def _conflicts(ctx: _Ctx, out: TensorResult) -> None:
    """TIES sign conflicts of the trimmed task vectors (trim in the merge dtype)."""
    labels, det = ctx.labels, ctx.det
    sc = C.sign_conflicts(ctx.deltas, density=ctx.settings.k, return_mask=det is not None,
                          dtype=ctx.trim_dtype)
    ov_note = "" if sc.overlap_frac > 0 else "no overlapping trimmed entries"
    ctx.add("all", "sign_conflict", sc.conflict_frac)
    ctx.add("all", "sign_conflict_overlap", sc.conflict_frac_overlap, ov_note)
    ctx.add("all", "sign_overlap", sc.overlap_frac)
    ctx.add("all", "ties_mass_lost", sc.mass_lost)
    for i, lab in enumerate(labels):
        ctx.add(lab, "ties_mass_lost", sc.mass_lost_per_model[i])
    for i, j in ctx.pairs:
        a = float(sc.agreement[i, j])
        ctx.add(ctx.pair(i, j), "sign_agreement", a,
                "trimmed task vectors never overlap" if math.isnan(a) else "")
    if det is not None:
        det.sign_agreement = sc.agreement.cpu()
        det.conflict_map = C.pooled_map(sc.conflict_mask, ctx.settings.map_size).cpu()
        det.conflicts = {
            "conflict_frac": sc.conflict_frac,
            "conflict_frac_overlap": sc.conflict_frac_overlap,
            "overlap_frac": sc.overlap_frac,
            "mass_lost": sc.mass_lost,
        }
        det.mass_lost_per_model = sc.mass_lost_per_model.cpu()


def _intruders(ctx: _Ctx, out: TensorResult) -> None:
    """Intruder dimensions of each tuned matrix against the base's singular vectors."""
    base, s, det = ctx.base, ctx.settings, ctx.det
    if not ctx.two_d:
        for lab in ctx.labels:
            ctx.add(lab, "intruders", NAN, f"{base.dim()}-D tensor: no singular vectors")
        return
    if float(base.abs().max()) == 0.0:
        for lab in ctx.labels:
            ctx.add(lab, "intruders", NAN, "zero base matrix: no singular vectors")
        return
    gb = ctx.gsvd.get("base")
    base_u = None
    for i, lab in enumerate(ctx.labels):
        if float(ctx.deltas[i].abs().max()) == 0.0:
            ctx.add(lab, "intruders", 0.0, "model equals base")
            ctx.add(lab, "intruder_min_cos", 1.0, "model equals base")
            continue
        gt = ctx.gsvd.get(lab)
        if gb is not None and gt is not None and gb.resolved() and gt.resolved(s.intruder_k):
            r = U.intruders_from_gram(base, gb, ctx.tuned(i), gt, s.intruder_k, s.intruder_eps)
        else:
            if base_u is None:
                base_u, _ = U.left_singular_vectors(base, None)
            r = U.intruder_dimensions(base, ctx.tuned(i), s.intruder_k, s.intruder_eps,
                                      base_u=base_u)
        ctx.add(lab, "intruders", r.count)
        ctx.add(lab, "intruder_min_cos", r.max_cos.min())
        if det is not None:
            det.intruders[lab] = U.Intruders(
                r.max_cos.cpu(), r.base_index.cpu(), r.is_intruder.cpu(), r.sv.cpu(),
                r.count, r.k, r.eps)


def _subspace(ctx: _Ctx, out: TensorResult) -> None:
    """Principal-angle overlap of the top-k left singular subspaces of each pair of deltas."""
    n, det, deltas = len(ctx.labels), ctx.det, ctx.deltas
    if n < 2:
        return
    if not ctx.two_d:
        for i, j in ctx.pairs:
            ctx.add(ctx.pair(i, j), "subspace_overlap", NAN,
                    f"{ctx.base.dim()}-D tensor: no subspace")
        return
    k = ctx.settings.subspace_k

    def vectors(i: int) -> Tensor | None:
        if float(deltas[i].abs().max()) == 0.0:
            return None
        g = ctx.gsvd.get(f"delta:{ctx.labels[i]}")
        if g is not None and g.resolved(k):
            return g.left(deltas[i], min(k, min(deltas[i].shape)))
        return U.left_singular_vectors(deltas[i], k)[0]

    us = [vectors(i) for i in range(n)]
    ov = torch.full((n, n), NAN, dtype=torch.float64)
    for i in range(n):
        if us[i] is not None:
            ov[i, i] = 1.0
    for i, j in ctx.pairs:
        if us[i] is None or us[j] is None:
            ctx.add(ctx.pair(i, j), "subspace_overlap", NAN, "zero task vector")
            continue
        pc = U.principal_cosines(us[i], us[j]).cpu()
        v = float((pc * pc).mean())
        ov[i, j] = ov[j, i] = v
        ctx.add(ctx.pair(i, j), "subspace_overlap", v)
        if det is not None:
            det.principal_cosines[ctx.pair(i, j)] = pc
    if det is not None:
        det.subspace_overlap = ov


def _masks(ctx: _Ctx, out: TensorResult) -> None:
    """IoU of magnitude masks (sparsity ``settings.sparsity``): models vs base and pairwise."""
    s, base = ctx.settings.sparsity, ctx.base
    mb = MK.magnitude_mask(base, s)
    mm = []
    for i in range(len(ctx.labels)):  # base + Δ built one tensor-sized buffer at a time
        a = torch.add(base, ctx.deltas[i])
        mm.append(MK.magnitude_mask(a, s))
        del a
    for i, lab in enumerate(ctx.labels):
        ctx.add(lab, "mask_iou_base", MK.mask_iou(mm[i], mb))
    for i, j in ctx.pairs:
        ctx.add(ctx.pair(i, j), "mask_iou", MK.mask_iou(mm[i], mm[j]))


_FAMILY_FNS = {"deltas": _deltas, "spectra": _spectra_family, "conflicts": _conflicts,
               "intruders": _intruders, "subspace": _subspace, "masks": _masks}
