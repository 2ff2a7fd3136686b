"""Peak memory of a streaming analysis: base + N fine-tunes of a synthetic ~2 GB fp32 checkpoint.

    python bench/bench_streaming.py                       # 2 GB, 3 fine-tunes, CPU
    python bench/bench_streaming.py --device cuda --hidden 4096 --inter 11008
    python bench/bench_streaming.py --families deltas,spectra,conflicts,masks

Builds the checkpoints (sharded HF safetensors dirs) in a temporary directory, then runs
``wsviz.analysis.analyze`` (no cache) in a *subprocess* which reports its own peak RSS
(``VmHWM`` from ``/proc/self/status``, i.e. ``ru_maxrss`` without the parent's
high-water mark that Linux carries across fork/exec) and wall time; a second subprocess that only
imports wsviz and opens the model set gives the fixed baseline (interpreter + torch + pandas).

Synthetic layout per block (``--hidden H``, ``--inter I``): ``self_attn.qkv_proj [3H, H]``,
``self_attn.o_proj [H, H]``, ``mlp.up_proj [I, H]``, ``mlp.down_proj [H, I]``,
``input_layernorm [H]``; plus ``embed_tokens`` and ``lm_head`` ``[vocab, H]``; blocks are
added until the file holds ``--size-gb`` of fp32. Fine-tune j = base + 0.01·N(0,1) on a
random 50 % of entries. Default H=256, I=16384 keeps the spectra cheap on a 2-core CPU while
holding 16 MB tensors (64 MB embeddings); use 7B-shaped H=4096, I=11008 on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
if args_threads := json.loads(sys.argv[1]).get("threads"):
    torch.set_num_threads(args_threads)
from wsviz.analysis import AnalysisSettings, analyze
from wsviz.io import ModelSet
args = json.loads(sys.argv[1])
ms = ModelSet.open(args["base"], args["fts"])
t_open = time.perf_counter() - t0
out = {"open_s": t_open}
if args["run"]:
    t1 = time.perf_counter()
    s = AnalysisSettings(families=tuple(args["families"]))
    r = analyze(ms, device=args["device"], settings=s, use_cache=False, progress=False)
    if args["device"].startswith("cuda"):
        torch.cuda.synchronize()
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["analyze_s"] = time.perf_counter() - t1
    out["rows"] = len(r.table)
    out["tensors"] = len(r.layers)
# VmHWM is the peak RSS of this process's own address space; ru_maxrss would also carry
# the parent's high-water mark across fork/exec on Linux
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
out["maxrss_mb"] = (int(hwm[0].split()[1]) / 1024 if hwm
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print("RESULT " + json.dumps(out))
"""


def layout(size_gb: float, hidden: int, inter: int, vocab: int) -> list[tuple[str, tuple]]:
    h, i = hidden, inter
    names: list[tuple[str, tuple]] = [("model.embed_tokens.weight", (vocab, h))]
    budget = int(size_gb * 2**30 / 4) - 2 * vocab * h
    per_block = 3 * h * h + h * h + 2 * i * h + h
    blocks = max(1, budget // per_block)
    for b in range(blocks):
        p = f"model.layers.{b}."
        names += [(p + "input_layernorm.weight", (h,)),
                  (p + "self_attn.qkv_proj.weight", (3 * h, h)),
                  (p + "self_attn.o_proj.weight", (h, h)),
                  (p + "mlp.up_proj.weight", (i, h)),
                  (p + "mlp.down_proj.weight", (h, i))]
    names.append(("lm_head.weight", (vocab, h)))
    return names


def build(root: Path, names, n_ft: int, shard_bytes: int = 512 << 20) -> tuple[Path, list[Path]]:
    from safetensors.torch import save_file

    shards: list[list[tuple[str, tuple]]] = [[]]
    acc = 0
    for name, shape in names:
        nbytes = 4 * int(torch.tensor(shape).prod())
        if acc + nbytes > shard_bytes and shards[-1]:
            shards.append([])
            acc = 0
        shards[-1].append((name, shape))
        acc += nbytes
    dirs = [root / "base"] + [root / f"ft{j}" for j in range(n_ft)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    total = 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        for m, d in enumerate(dirs):
            sd = {}
            for idx, (name, shape) in enumerate(shard):
                g = torch.Generator().manual_seed(hash((k, idx)) & 0xFFFFFFFF)
                w = torch.randn(shape, generator=g) * 0.02
                if m > 0:
                    g2 = torch.Generator().manual_seed((hash((k, idx)) + 7919 * m) & 0xFFFFFFFF)
                    noise = torch.randn(shape, generator=g2) * 0.01
                    keep = torch.rand(shape, generator=g2) < 0.5
                    w += noise * keep
                    del noise, keep
                sd[name] = w
            save_file(sd, d / fname)
            if m == 0:
                total += sum(v.numel() * 4 for v in sd.values())
            del sd
    for d in dirs:
        wm = {name: f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
              for k, shard in enumerate(shards) for name, _ in shard}
        (d / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": wm}))
    return dirs[0], dirs[1:], total


def run_child(payload: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(payload)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child failed with status {proc.returncode}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def main() -> None:
    from wsviz.analysis.settings import FAMILIES

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--fts", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--inter", type=int, default=16384)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--limit-mb", type=float, default=1536)
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the child")
    ap.add_argument("--keep", type=Path, default=None, help="build here and keep the files")
    args = ap.parse_args()

    names = layout(args.size_gb, args.hidden, args.inter, args.vocab)
    with tempfile.TemporaryDirectory(prefix="wsviz_stream_") as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        base, fts, total = build(root, names, args.fts)
        t_build = time.perf_counter() - t0
        largest = max(4 * int(torch.tensor(s).prod()) for _, s in names)
        print(f"[stream] checkpoint: {len(names)} tensors, {total / 2**30:.2f} GiB fp32 each "
              f"x {1 + args.fts} models (largest tensor {largest / 2**20:.0f} MiB), "
              f"built in {t_build:.0f} s")
        payload = {"base": str(base), "fts": [str(f) for f in fts], "device": args.device,
                   "families": [f for f in args.families.split(",") if f],
                   "threads": args.threads}
        baseline = run_child({**payload, "run": False})
        res = run_child({**payload, "run": True})
    ok = res["maxrss_mb"] < args.limit_mb
    print(f"[stream] families: {','.join(payload['families'])}; device {args.device}")
    print(f"[stream] analyze: {res['tensors']} tensors, {res['rows']} rows in "
          f"{res['analyze_s']:.1f} s")
    print(f"[stream] peak RSS {res['maxrss_mb']:.0f} MiB (limit {args.limit_mb:.0f} MiB: "
          f"{'OK' if ok else 'EXCEEDED'}); import+open baseline {baseline['maxrss_mb']:.0f} MiB; "
          f"data read {total * (1 + args.fts) / 2**30:.1f} GiB"
          + (f"; GPU peak {res['gpu_peak_mb']:.0f} MiB" if "gpu_peak_mb" in res else ""))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
