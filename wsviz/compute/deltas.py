"""Task-vector (delta) statistics: norms, near-zero fractions, cosines, sketches.

A task vector of model m for tensor W is ``Δ_m = W_m - W_0`` (fine-tuned minus base).
Functions take stacked deltas ``[n_models, *shape]`` and work on any device.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

DELTA_METRICS = ("delta_fro", "delta_rel", "delta_mean_abs", "delta_max_abs", "delta_frac_zero")


def delta_stats(
    deltas: Tensor, base: Tensor, atol: float = 1e-8, rtol: float = 1e-5, chunk: int = 1 << 20
) -> dict[str, Tensor]:
    """Per-model statistics of task vectors.

    Shapes: ``deltas`` ``[n, *shape]``, ``base`` ``[*shape]`` -> each value ``[n]`` (float64):

    - ``delta_fro``: ``||Δ||_F``;
    - ``delta_rel``: ``||Δ||_F / ||W_0||_F`` (0 when both are 0, ``inf`` when only W_0 is 0);
    - ``delta_mean_abs``: ``mean |Δ|``; ``delta_max_abs``: ``max |Δ|``;
    - ``delta_frac_zero``: fraction of entries with ``|Δ| <= atol + rtol·|W_0|``
      (``torch.isclose`` semantics: the fine-tune left that weight unchanged).

    Sums are accumulated in float64 over chunks of ``chunk`` entries (no full float64 copy).
    """
    n = deltas.shape[0]
    d = deltas.reshape(n, -1)
    b = base.reshape(-1).to(d.device)
    numel = d.shape[1]
    f64 = torch.float64
    sq = torch.zeros(n, dtype=f64, device=d.device)
    ab = torch.zeros(n, dtype=f64, device=d.device)
    mx = torch.zeros(n, dtype=f64, device=d.device)
    zc = torch.zeros(n, dtype=f64, device=d.device)
    bsq = torch.zeros((), dtype=f64, device=d.device)
    for start in range(0, numel, chunk):
        x = d[:, start:start + chunk].to(f64)
        bb = b[start:start + chunk].to(f64)
        a = x.abs()
        sq += (x * x).sum(1)
        ab += a.sum(1)
        mx = torch.maximum(mx, a.amax(1))
        zc += (a <= (atol + rtol * bb.abs()).unsqueeze(0)).sum(1).to(f64)
        bsq += (bb * bb).sum()
        del x, a, bb
    fro = sq.sqrt()
    bn = float(bsq.sqrt())
    if bn > 0:
        rel = fro / bn
    else:
        rel = torch.where(fro > 0, torch.full_like(fro, float("inf")), torch.zeros_like(fro))
    if numel == 0:
        z = torch.zeros(n, dtype=f64, device=d.device)
        return {"delta_fro": z, "delta_rel": z, "delta_mean_abs": z, "delta_max_abs": z,
                "delta_frac_zero": z + 1}
    return {
        "delta_fro": fro,
        "delta_rel": rel,
        "delta_mean_abs": ab / numel,
        "delta_max_abs": mx,
        "delta_frac_zero": zc / numel,
    }


def gram(x: Tensor, chunk: int = 1 << 20) -> Tensor:
    """Inner products of flattened rows: ``[n, *shape] -> [n, n]`` in float64 (``X Xᵀ``),
    accumulated over column chunks of ``chunk`` entries.

    Summing these over tensors gives the whole-model Gram matrix of task vectors.
    """
    x = x.reshape(x.shape[0], -1)
    g = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[1], chunk):
        c = x[:, start:start + chunk].to(torch.float64)
        g += c @ c.T
    return g


def cosine_from_gram(g: Tensor) -> Tensor:
    """Cosine similarity matrix ``G_ij / sqrt(G_ii G_jj)`` from a Gram matrix ``[n, n]``.

    Rows with zero norm have cosine 0 with every other row; the diagonal is 1 for non-zero
    rows and 0 for zero rows (a zero task vector points nowhere).
    """
    d = g.diagonal().clamp_min(0).sqrt()
    denom = d.unsqueeze(0) * d.unsqueeze(1)
    c = torch.where(denom > 0, g / denom.clamp_min(1e-300), torch.zeros_like(g))
    return c.clamp(-1.0, 1.0)


def cosine_matrix(x: Tensor) -> Tensor:
    """Pairwise cosine similarity of flattened rows: ``[n, *shape] -> [n, n]`` (float64)."""
    return cosine_from_gram(gram(x))


def _seed_for(name: str, seed: int) -> int:
    h = hashlib.sha256(f"{seed}|{name}".encode()).digest()
    return int.from_bytes(h[:7], "little")


def count_sketch(x: Tensor, dim: int, name: str = "", seed: int = 0) -> Tensor:
    """CountSketch random projection of flattened rows: ``[n, *shape] -> [n, dim]`` (float32).

    Every coordinate j is added, with a random sign ``s_j = ±1``, into bucket ``h(j)`` — both
    drawn from a generator seeded by ``(seed, name)``, so the same tensor name always maps the
    same way and sketches of different tensors can be summed into one model-level sketch.
    Inner products are preserved in expectation (``E<Sx, Sy> = <x, y>``) with variance
    ``<= 2 ||x||² ||y||² / dim``, so cosines of the sketches approximate the task-vector cosines
    to ~``sqrt(2/dim)``. Memory: O(numel) int64 for the hash, one tensor at a time.
    """
    n = x.shape[0]
    flat = x.reshape(n, -1)
    g = torch.Generator().manual_seed(_seed_for(name, seed))
    numel = flat.shape[1]
    out = torch.zeros(n, dim, dtype=torch.float32, device=x.device)
    chunk = 1 << 20
    for start in range(0, numel, chunk):
        stop = min(numel, start + chunk)
        h = torch.randint(dim, (stop - start,), generator=g).to(x.device)
        s = (torch.randint(2, (stop - start,), generator=g) * 2 - 1).to(x.device, torch.float32)
        out.index_add_(1, h, flat[:, start:stop].to(torch.float32) * s)
    return out
