"""Progressive analysis of a SmolLM2-135M-shaped bf16 Llama family, as the user sees it.

    python bench/bench_live.py                 # build the family (once) + analyse it
    python bench/bench_live.py --browser       # also: page open -> grid shows numbers (Chromium)
    python bench/bench_live.py --workers 1     # one analysis worker instead of two

The family (built once into ``--dir``, default ``~/.cache/wsviz/bench_live``): a randomly
initialised transformers ``LlamaForCausalLM`` with SmolLM2-135M's shape (30 blocks, hidden 576,
9 heads / 3 KV heads, MLP 1536, vocab 49152, tied embeddings), "pre-trained" by a few AdamW steps
on Python's own ``this``/license text, then three fine-tunes by a few real training steps each on
different local texts (scikit-learn dataset descriptions, Python's ``LICENSE``-like stdlib
docstrings, the ``email`` package source); byte-level tokens. Stored as bf16 safetensors.

Measured (fresh cache dir, so nothing is served from an earlier run):

- time to the first partial table (cheap metrics of every tensor) and to the full analysis,
  of :class:`wsviz.analysis.AnalysisRun` in this process, and of ``wsviz analyze`` (whole
  process, peak RSS via ``/usr/bin/time``-free ``resource.getrusage`` of the child);
- with ``--browser``: ``wsviz serve`` on the family with a fresh cache, Chromium opens the page,
  time until the depth x module grid shows numbers, and until the analysis is complete.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
             num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
             tie_word_embeddings=True, max_position_embeddings=2048, rms_norm_eps=1e-5,
             rope_theta=10000.0)


def _texts() -> dict[str, str]:
    """Local texts: pre-training + three fine-tuning corpora (shipped with Python / sklearn)."""
    import contextlib
    import email
    import io
    import json

    import sklearn

    with contextlib.redirect_stdout(io.StringIO()):
        import this  # the Zen of Python (rot13 in this.s); importing it prints it

    descr = Path(sklearn.__file__).parent / "datasets" / "descr"
    zen = "".join(this.d.get(c, c) for c in this.s)
    return {
        "base": zen * 20 + Path(json.__file__).read_text(),
        "sk": "".join(p.read_text() for p in sorted(descr.glob("*.rst"))),
        "email": "".join(p.read_text() for p in sorted(Path(email.__file__).parent.glob("*.py"))),
        "argparse": Path(argparse.__file__).read_text(),
    }


def _train(model, text: str, steps: int, lr: float, seed: int, seq: int = 128,
           batch: int = 4) -> float:
    """A few AdamW steps of next-byte prediction on ``text``; returns the last loss."""
    import torch

    data = torch.tensor(list(text.encode("utf-8", "replace")), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    loss = float("nan")
    for _ in range(steps):
        idx = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        x = torch.stack([data[i:i + seq] for i in idx])
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = float(out.loss)
    return loss


def build_family(root: Path, steps: int = 3) -> tuple[Path, list[Path]]:
    """Build (once) base + 3 fine-tunes under ``root``; returns ``(base_dir, [ft dirs])``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    names = ["sk", "email", "argparse"]
    base_dir, fts = root / "base", [root / f"ft_{n}" for n in names]
    if all((d / "model.safetensors").is_file() for d in (base_dir, *fts)):
        return base_dir, fts
    torch.manual_seed(0)
    texts = _texts()
    cfg = LlamaConfig(**SHAPE, torch_dtype="bfloat16")
    t0 = time.perf_counter()
    model = LlamaForCausalLM(cfg)
    loss = _train(model, texts["base"], steps, 1e-3, seed=0)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.to(torch.bfloat16).save_pretrained(base_dir, safe_serialization=True)
    print(f"[build] base: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, "
          f"loss {loss:.2f}, {time.perf_counter() - t0:.0f} s")
    for i, (n, d) in enumerate(zip(names, fts)):
        model = LlamaForCausalLM(cfg)
        model.load_state_dict(base_state)
        loss = _train(model, texts[n], steps, 3e-4, seed=i + 1)
        model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
        print(f"[build] {d.name}: loss {loss:.2f}, {time.perf_counter() - t0:.0f} s")
    return base_dir, fts


def bench_inprocess(base: Path, fts: list[Path], workers: int) -> dict:
    """AnalysisRun in this process on a fresh cache: first partial table, full analysis."""
    from wsviz.analysis import AnalysisRun
    from wsviz.io import ModelSet

    ms = ModelSet.open(str(base), [str(p) for p in fts])
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        run = AnalysisRun(ms, cache_dir=cache, workers=workers)
        run.start()
        run.wait_cheap()
        t_cheap = time.perf_counter() - t0
        res = run.result()
        t_full = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"[analyze] {len(res.layers)} tensors x {len(res.labels)} models: cheap metrics "
          f"{t_cheap:.1f} s, full analysis {t_full:.1f} s, peak RSS {rss:.0f} MiB "
          f"(workers={workers})")
    return {"cheap": t_cheap, "full": t_full, "rss": rss}


def bench_cli(base: Path, fts: list[Path]) -> dict:
    """``wsviz analyze BASE FT1 FT2 FT3`` as a whole process on a fresh cache."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "wsviz.cli", "analyze", str(base), *map(str, fts),
               "-o", f"{tmp}/t.parquet", "--cache-dir", f"{tmp}/cache"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if p.returncode != 0:
        print(p.stdout, p.stderr)
        raise SystemExit("wsviz analyze failed")
    lines = [x for x in p.stderr.splitlines() + p.stdout.splitlines() if "cheap" in x]
    print(f"[cli] wsviz analyze (whole process): {dt:.1f} s, peak RSS {rss:.0f} MiB; "
          + (lines[-1].strip() if lines else ""))
    return {"cli": dt, "cli_rss": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path,
                    default=Path(os.path.expanduser("~/.cache/wsviz/bench_live")))
    ap.add_argument("--steps", type=int, default=3, help="training steps per model")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--no-cli", action="store_true")
    ap.add_argument("--browser", action="store_true",
                    help="also time page open -> grid with numbers in Chromium")
    args = ap.parse_args()
    base, fts = build_family(args.dir, args.steps)
    if args.build_only:
        return
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    r = bench_inprocess(base, fts, args.workers)
    if not args.no_cli:
        r |= bench_cli(base, fts)
    if args.browser:
        from bench_live_browser import bench_browser

        r |= bench_browser(base, fts)
    print("target: cheap metrics <= 5 s after page open; full analysis <= 60 s")
    print(f"figures: {r}")


if __name__ == "__main__":
    main()
