"""Spectral metrics: wsviz vs WeightWatcher on all-MiniLM-L6-v2, and 7B-shaped layers.

    python bench/bench_spectra.py                      # MiniLM parity + speed vs weightwatcher
    python bench/bench_spectra.py --mode 7b --device cuda --blocks 4
    python bench/bench_spectra.py --mode all --device cuda

minilm: runs ``weightwatcher.WeightWatcher(model).analyze()`` (model loaded with transformers
``AutoModel`` from ``tests.fixtures_paths.minilm_path()``, load time not counted) and
``wsviz.analysis.spectra_table`` (read from the safetensors file, time counted) in the same
process; prints per-layer agreement of alpha / stable_rank / xmin and the speed ratio.

7b: synthetic Llama-7B-shaped matrices (q/k/v/o 4096x4096, gate/up 11008x4096,
down 4096x11008, per block), singular values by the batched float64 Gram path vs exact
``svdvals`` (error of the fast path) and randomized top-k, plus the power-law fit time.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.fixtures_paths


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench_minilm(dev, repeat: int) -> None:
    from tests.fixtures_paths import minilm_path
    from wsviz.analysis import spectra_table

    path = minilm_path()
    warnings.filterwarnings("ignore")
    import weightwatcher as ww
    from transformers import AutoModel

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    model = AutoModel.from_pretrained(path)
    # warm-up both (imports, allocators) on one small layer each is not possible for WW's
    # whole-model API; time one full WW run and our runs.
    t0 = time.perf_counter()
    ref = ww.WeightWatcher(model=model).analyze()
    t_ww = time.perf_counter() - t0

    times = []
    ours = None
    for _ in range(repeat):
        sync(dev)
        t0 = time.perf_counter()
        ours = spectra_table(path, device=dev)
        sync(dev)
        times.append(time.perf_counter() - t0)
    ours = ours.set_index("name")
    worst = {"alpha": 0.0, "stable_rank": 0.0, "xmin": 0.0, "alpha_weighted": 0.0}
    n_match = 0
    differing = []
    for _, r in ref.iterrows():
        name = f"{r['longname']}.weight"
        if name not in ours.index:
            differing.append(f"{name}: reported by weightwatcher only")
            continue
        o = ours.loc[name]
        n_match += 1
        worst["alpha"] = max(worst["alpha"], abs(o["alpha"] - r["alpha"]))
        worst["stable_rank"] = max(worst["stable_rank"],
                                   abs(o["stable_rank"] - r["stable_rank"]) / r["stable_rank"])
        worst["xmin"] = max(worst["xmin"], abs(o["xmin"] - r["xmin"]) / r["xmin"])
        worst["alpha_weighted"] = max(worst["alpha_weighted"],
                                      abs(o["alpha_weighted"] - r["alpha_weighted"]))
        if abs(o["alpha"] - r["alpha"]) > 1e-6:
            differing.append(f"{name}: alpha {o['alpha']:.6f} vs {r['alpha']:.6f}")
    extra = [x for x in ours.index if x not in {f"{n}.weight" for n in ref["longname"]}]
    print(f"[minilm] device={dev} layers: weightwatcher {len(ref)}, wsviz {len(ours)}, "
          f"matched {n_match}, wsviz-only {len(extra)}")
    print(f"[minilm] max |alpha diff| = {worst['alpha']:.2e}, max rel stable_rank diff = "
          f"{worst['stable_rank']:.2e}, max rel xmin diff = {worst['xmin']:.2e}, "
          f"max |alpha_weighted diff| = {worst['alpha_weighted']:.2e}")
    for d in differing:
        print(f"[minilm]   differs: {d}")
    med = statistics.median(times)
    print(f"[minilm] weightwatcher analyze(): {t_ww:.2f} s; wsviz spectra_table: first "
          f"{times[0]:.3f} s, median of {len(times)} {med:.3f} s")
    print(f"[minilm] speedup vs weightwatcher: {t_ww / times[0]:.1f}x (first run), "
          f"{t_ww / med:.1f}x (median)")
    ftimes = []
    fast = None
    for _ in range(repeat):
        sync(dev)
        t0 = time.perf_counter()
        fast = spectra_table(path, device=dev, precision="fast")
        sync(dev)
        ftimes.append(time.perf_counter() - t0)
    fast = fast.set_index("name")
    da, ds = 0.0, 0.0
    for _, r in ref.iterrows():
        name = f"{r['longname']}.weight"
        if name in fast.index:
            da = max(da, abs(fast.loc[name, "alpha"] - r["alpha"]))
            ds = max(ds, abs(fast.loc[name, "stable_rank"] - r["stable_rank"]) / r["stable_rank"])
    fmed = statistics.median(ftimes)
    print(f"[minilm] precision='fast' (float32 Gram): median {fmed:.3f} s, speedup "
          f"{t_ww / fmed:.1f}x; max |alpha diff| {da:.1e}, max rel stable_rank diff {ds:.1e}")


def bench_7b(dev, blocks: int, exact: bool, lowrank_k: int, scale: int = 1) -> None:
    from wsviz.compute.powerlaw import fit_powerlaw
    from wsviz.compute.spectra import batched_singular_values

    g = torch.Generator(device=dev).manual_seed(0)
    h, i = 4096 // scale, 11008 // scale
    shapes = {(h, h): 4 * blocks, (i, h): 2 * blocks, (h, i): blocks}
    total_mats = sum(shapes.values())
    print(f"[7b] device={dev} blocks={blocks}: {total_mats} matrices "
          f"({', '.join(f'{c}x {r}x{k}' for (r, k), c in shapes.items())})")
    t_all = 0.0
    evals_all = []
    batch_bytes = (6 << 30) if dev.type == "cuda" else (512 << 20)
    for (r, c), count in shapes.items():
        mats = torch.randn(count, r, c, generator=g, device=dev) * 0.02
        # heavy-tailed spectrum: add a few strong rank-1 spikes
        for i in range(count):
            u = torch.randn(r, 8, generator=g, device=dev)
            v = torch.randn(8, c, generator=g, device=dev)
            mats[i] += (u @ v) * 0.002
        m = min(r, c)
        per = r * c * 8 + m * m * 8
        step = max(1, batch_bytes // per) if dev.type == "cuda" else 1
        sync(dev)
        t0 = time.perf_counter()
        outs = []
        for s0 in range(0, count, step):
            outs.append(batched_singular_values(mats[s0:s0 + step], mode="gram"))
        sync(dev)
        dt = time.perf_counter() - t0
        t_all += dt
        sv = torch.cat(outs)
        evals_all.extend(list(sv.pow(2)))
        print(f"[7b] gram float64 {r}x{c}: {count} matrices in {dt:.2f} s "
              f"({dt / count * 1e3:.0f} ms each, batch {step})")
        if exact:
            sync(dev)
            t0 = time.perf_counter()
            ref = torch.linalg.svdvals(mats[:1].double())
            sync(dev)
            te = time.perf_counter() - t0
            err = ((sv[0].pow(2) - ref[0].pow(2)).abs().max() / ref[0, 0].pow(2)).item()
            rel_small = ((sv[0] - ref[0]).abs() / ref[0]).max().item()
            print(f"[7b] exact svdvals float64 {r}x{c}: {te:.2f} s per matrix; gram error "
                  f"max|dλ|/λ_max = {err:.1e}, max rel dσ = {rel_small:.1e}")
            sync(dev)
            t0 = time.perf_counter()
            lr = batched_singular_values(mats[:1], mode="lowrank", k=lowrank_k,
                                         dtype=torch.float32)
            sync(dev)
            tl = time.perf_counter() - t0
            lerr = ((lr[0] - ref[0, :lowrank_k].to(lr.dtype)).abs() / ref[0, 0]).max().item()
            print(f"[7b] lowrank top-{lowrank_k} float32 {r}x{c}: {tl:.2f} s per matrix; "
                  f"max|dσ|/σ_1 = {lerr:.1e}")
        del mats
    t0 = time.perf_counter()
    alphas = [fit_powerlaw(e).alpha for e in evals_all]
    sync(dev)
    tf = time.perf_counter() - t0
    print(f"[7b] power-law fits: {len(alphas)} in {tf:.2f} s "
          f"({tf / len(alphas) * 1e3:.0f} ms each); singular values total {t_all:.2f} s")
    per_block = (t_all + tf) / blocks
    what = "7B block" if scale == 1 else f"7B block scaled 1/{scale}"
    print(f"[7b] spectra + alpha per {what}: {per_block:.2f} s -> 32 blocks ~ "
          f"{32 * per_block:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", default="minilm", choices=["minilm", "7b", "all"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=1, help="7B blocks of matrices (7b mode)")
    ap.add_argument("--no-exact", action="store_true", help="skip exact-SVD error check (7b)")
    ap.add_argument("--lowrank-k", type=int, default=256)
    ap.add_argument("--scale", type=int, default=1,
                    help="divide the 7B dimensions by this (smoke test on a small CPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit BLAS/OpenMP threads of both tools (torch + threadpoolctl)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    import os

    print(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    if args.mode in ("minilm", "all"):
        bench_minilm(dev, args.repeat)
    if args.mode in ("7b", "all"):
        bench_7b(dev, args.blocks, not args.no_exact, min(args.lowrank_k, 4096 // args.scale),
                 args.scale)


if __name__ == "__main__":
    main()
