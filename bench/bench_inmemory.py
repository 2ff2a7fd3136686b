"""In-memory merge throughput vs the machine's memory-copy bandwidth (measured here).

    python bench/bench_inmemory.py [--params 16e6] [--models 4] [--device cpu|cuda]
                                   [--dtype float32|bfloat16]

Builds a synthetic Llama-shaped model set in memory (base + N fine-tunes, stored in
``--dtype``), caches it in an InMemoryMerger (in that dtype, as mergekit computes), then
times merges. Bytes moved per merge = the cached inputs a merge must read once (base, task
vectors, and the int32 rank cache for TIES) + the output written; memory-copy bandwidth =
(read + write bytes) / time of ``dst.copy_(src)`` on a large buffer, measured in the same
run. Prints the ratio (goal: >= 50 %) and checks the TIES result equals mergekit's
in-memory ``merge_tensors`` on one tensor (bit for bit).
"""

from __future__ import annotations

import argparse
import time

import torch


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(dev, nbytes=512 * 2**20, reps=5) -> float:
    src = torch.ones(nbytes // 4, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(dev)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def build(n_params: float, n_models: int, dtype=torch.float32):
    hidden = 1024
    inter = 2816
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    layers = max(1, int(n_params // per_layer))
    g = torch.Generator().manual_seed(0)
    base = {}
    for i in range(layers):
        for nm, shape in (("self_attn.q_proj", (hidden, hidden)), ("self_attn.k_proj", (hidden, hidden)),
                          ("self_attn.v_proj", (hidden, hidden)), ("self_attn.o_proj", (hidden, hidden)),
                          ("mlp.up_proj", (inter, hidden)), ("mlp.gate_proj", (inter, hidden)),
                          ("mlp.down_proj", (hidden, inter))):
            base[f"model.layers.{i}.{nm}.weight"] = torch.randn(shape, generator=g) * 0.02
    fts = []
    for _j in range(n_models):
        fts.append({k: (v + 0.002 * torch.randn(v.shape, generator=g)).to(dtype)
                    for k, v in base.items()})
    return {k: v.to(dtype) for k, v in base.items()}, fts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=float, default=16e6)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; use 1 on an oversubscribed box)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    from wsviz.io import ModelSet
    from wsviz.recipes import InMemoryMerger, Recipe

    dt = getattr(torch, a.dtype)
    base, fts = build(a.params, a.models, dt)
    ms = ModelSet.open(base, fts, labels=[f"m{i}" for i in range(a.models)])
    t0 = time.perf_counter()
    mg = InMemoryMerger(ms, device=dev)
    sync(dev)
    numel = sum(mg.base(n).numel() for n in mg.names)
    import os

    print(f"device {dev}, threads {torch.get_num_threads()}, {len(mg.names)} tensors, "
          f"{numel / 1e6:.1f} M params x {a.models} models ({a.dtype}) cached in "
          f"{time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f}")
    bw = copy_bandwidth(dev)
    print(f"memory-copy bandwidth: {bw / 1e9:.2f} GB/s (read + write)")
    labels = mg.labels
    sz = torch.finfo(dt).bits // 8
    cases = {
        "task_arithmetic": (Recipe("task_arithmetic", base="base", models=[
            {"model": lab, "params": {"weight": 0.5}} for lab in labels]),
            sz * a.models + 2 * sz),
        "ties": (Recipe("ties", base="base", models=[
            {"model": lab, "params": {"weight": 1.0, "density": 0.2}} for lab in labels]),
            (sz + 4) * a.models + 2 * sz),
    }
    for name, (r, bpe) in cases.items():
        mg.merge(r)  # warm-up (fills the rank cache for ties)
        sync(dev)
        best = float("inf")
        for _ in range(a.reps):
            t = time.perf_counter()
            mg.merge(r)
            sync(dev)
            best = min(best, time.perf_counter() - t)
        moved = bpe * numel
        print(f"in-memory {name:16s}: {best * 1e3:8.1f} ms/merge, {moved / best / 1e9:6.2f} GB/s "
              f"= {moved / best / bw:5.1%} of memory-copy bandwidth (goal >= 50 %)")
    try:  # the result is mergekit's
        from mergekit.merge_methods.api import merge_tensors
    except ImportError:
        return
    r = cases["ties"][0]
    n0 = mg.names[0]
    got = mg.merge(r, names=[n0])[n0].cpu()
    ref = merge_tensors([*(ft[n0] for ft in fts), base[n0]], "ties",
                        parameters={"weight": 1.0, "density": 0.2}, base_index=len(fts))
    print(f"ties equals mergekit.merge_tensors on {n0}: {torch.equal(got, ref)}")


if __name__ == "__main__":
    main()
