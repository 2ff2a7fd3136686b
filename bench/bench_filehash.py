"""What the analysis cache's full-content key costs, next to what it protects.

Writes a ~1 GB safetensors file (8 fp32 tensors of 4096 x 8192) and prints, in one run:

* the machine's read limit: one plain sequential read of the file (page cache warm);
* the full SHA-256 key (``wsviz.io.filehash.hash_file``, chunks hashed in threads), the
  first time a file is seen;
* the same key on a re-run (identity memo hit: a ``stat`` and a 65-byte read);
* the old sampled key (32 x 64 KiB blocks) that missed a 1 MiB edit;
* one ``analyze`` of a (base, fine-tune) pair of a smaller, real-sized layer set, for scale:
  what the key is spent to avoid recomputing.

    python bench/bench_filehash.py [--gb 1.0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file


def sampled_key(path: Path) -> bytes:
    size, block = path.stat().st_size, 64 << 10
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        step = (size - block) // 31
        for k in range(32):
            f.seek(k * step)
            h.update(f.read(block))
    return h.digest()


def plain_read(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0, help="file size in GB (fp32)")
    ap.add_argument("--keep", default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="wsviz-bench-hash-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["WSVIZ_CACHE_DIR"] = str(work / "cache")
    from wsviz.io import filehash as fh

    n = max(1, round(args.gb * 1e9 / (4096 * 8192 * 4)))
    g = torch.Generator().manual_seed(0)
    f = work / "model.safetensors"
    save_file({f"model.layers.{i}.mlp.up_proj.weight": torch.randn(4096, 8192, generator=g)
               for i in range(n)}, f)
    size = f.stat().st_size
    plain_read(f)  # warm the page cache: every figure below is CPU-bound, not disk-bound
    t_read = timed(lambda: plain_read(f))
    t_full = timed(lambda: fh.hash_file(f))
    t_full1 = timed(lambda: fh.hash_file(f, threads=1))
    old = time.time() - 3600
    os.utime(f, (old, old))
    fh.SETTLE_S = 0.0  # the file was just written: allow the memo for this measurement
    time.sleep(0.05)
    fh.file_digest(f)  # remember it
    t_memo = timed(lambda: fh.file_digest(f), repeat=20)
    t_sampled = timed(lambda: sampled_key(f))
    print(f"file: {size / 1e9:.2f} GB, {n} tensors 4096x8192 fp32; cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'what':48s} {'seconds':>9s} {'GB/s':>7s} {'x read':>7s}")
    for name, t in (("plain sequential read (machine limit)", t_read),
                    (f"full SHA-256 key, {min(os.cpu_count() or 1, 8)} threads (first sight)",
                     t_full),
                    ("full SHA-256 key, 1 thread", t_full1),
                    ("memo hit (unchanged file, re-run)", t_memo),
                    ("old sampled key (32 x 64 KiB, missed edits)", t_sampled)):
        rate = f"{size / t / 1e9:7.2f}" if t > 1e-3 else f"{'-':>7s}"
        print(f"{name:48s} {t:9.4f} {rate} {t / t_read:7.2f}")

    # for scale: analysing one (base, fine-tune) pair of 4 such tensors, deltas + spectra
    from wsviz.analysis import AnalysisSettings, analyze
    from wsviz.io import ModelSet

    m = 4
    sd = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(1024, 4096, generator=g)
          for i in range(m)}
    save_file(sd, work / "base.safetensors")
    save_file({k: v + 0.01 * torch.randn_like(v) for k, v in sd.items()},
              work / "ft.safetensors")
    nbytes = 2 * sum(v.numel() * 4 for v in sd.values())
    ms = ModelSet.open(work / "base.safetensors", [work / "ft.safetensors"])
    t0 = time.perf_counter()
    analyze(ms, settings=AnalysisSettings(families=("deltas", "spectra")), progress=False,
            use_cache=False, device="cpu")
    t_an = time.perf_counter() - t0
    t_key = t_full * nbytes / size
    print(f"analyze (deltas+spectra) of base+ft, {m} tensors 1024x4096 ({nbytes / 1e6:.0f} MB): "
          f"{t_an:.2f} s; the full key of those {nbytes / 1e6:.0f} MB costs ~{t_key:.3f} s "
          f"({100 * t_key / t_an:.1f} % of one analysis), a memo hit ~{t_memo * 1e3:.2f} ms")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
