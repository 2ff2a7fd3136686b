"""Disk-to-disk merge: ``wsviz merge`` vs ``mergekit-yaml`` on the same TIES YAML.

    python bench/bench_merge.py [--layers 12] [--threads N] [--keep DIR] [--method ties]

``--method`` picks another mergekit method instead of TIES (``sce``, ``ram``, ``karcher``,
``multislerp``, ``nuslerp``, ``nearswap``, ``arcee_fusion``) or ``frankenmerge``
(``passthrough`` over ``slices:``: the first 2/3 of the base's layers, then the last 2/3 of
a fine-tune's).

Builds a Llama-shaped checkpoint (hidden 768, intermediate 2048, vocab 16000, 12 layers:
~110 M parameters, fp32 safetensors) and 3 perturbed fine-tunes in a temp dir, writes one
TIES mergekit YAML (density 0.2, weight 1, normalize), then runs both command-line tools
on it as subprocesses in the same environment (wall-clock, including interpreter start),
checks the outputs are identical (max abs diff <= 1e-6) and prints the speed ratio.
``--threads`` sets OMP_NUM_THREADS for both runs (use 1 on an oversubscribed machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def build(root: Path, layers: int, n_ft: int = 3):
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=16000, hidden_size=768, intermediate_size=2048,
                      num_hidden_layers=layers, num_attention_heads=12, num_key_value_heads=12,
                      tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    h, i, v = 768, 2048, 16000
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,),
              "lm_head.weight": (v, h)}
    for li in range(layers):
        p = f"model.layers.{li}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (h, h),
            p + "self_attn.v_proj.weight": (h, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i)})
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    paths = []
    for j in range(n_ft + 1):
        d = root / ("base" if j == 0 else f"ft{j}")
        d.mkdir()
        cfg.save_pretrained(d)
        sd = base if j == 0 else {k: t + 0.002 * torch.randn(t.shape, generator=g)
                                  for k, t in base.items()}
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        paths.append(d)
    n = sum(t.numel() for t in base.values())
    return paths, n


def recipe_for(method: str, base, fts, layers: int):
    """The benchmarked recipe (paths) for ``method``."""
    from wsviz.recipes import Recipe

    base, fts = str(base), [str(f) for f in fts]
    if method == "ties":
        return Recipe("ties", base=base, models=[
            {"model": f, "params": {"weight": 1.0, "density": 0.2}} for f in fts])
    if method == "frankenmerge":
        k = 2 * layers // 3
        return Recipe("passthrough", base=base, slices=[
            {"sources": [{"model": base, "layer_range": [0, k]}]},
            {"sources": [{"model": fts[0], "layer_range": [layers - k, layers]}]}])
    if method in ("nuslerp", "multislerp"):
        n = 2 if method == "nuslerp" else len(fts)
        return Recipe(method, base=base, models=[
            {"model": f, "params": {"weight": 1.0}} for f in fts[:n]])
    if method in ("nearswap", "arcee_fusion"):
        return Recipe(method, base=base, models=fts[:1],  # seed: mergekit runs --random-seed 0
                      params={"t": 0.001} if method == "nearswap" else {},
                      seed=0 if method == "arcee_fusion" else None)
    if method == "karcher":
        return Recipe("karcher", models=fts)
    return Recipe(method, base=base, models=fts)


def run(cmd, env) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{p.stderr[-3000:]}")
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep", default=None, help="build in this dir and keep it")
    ap.add_argument("--method", default="ties",
                    help="ties, sce, ram, karcher, multislerp, nuslerp, nearswap, "
                         "arcee_fusion or frankenmerge")
    a = ap.parse_args()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="wsviz-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    try:
        t = time.perf_counter()
        if (root / "ft3" / "model.safetensors").exists():  # --keep DIR from an earlier run
            base, fts = root / "base", [root / f"ft{j}" for j in (1, 2, 3)]
            from safetensors import safe_open

            h = safe_open(str(base / "model.safetensors"), "pt")
            n = sum(h.get_slice(k).get_shape()[0] * (h.get_slice(k).get_shape()[1:] or [1])[0]
                    for k in h.keys())
            for d in ("out_mk", "out_ws"):
                shutil.rmtree(root / d, ignore_errors=True)
        else:
            (base, *fts), n = build(root, a.layers)
        print(f"base + {len(fts)} fine-tunes of {n / 1e6:.1f} M params ready in "
              f"{time.perf_counter() - t:.1f} s ({root})", flush=True)
        r = recipe_for(a.method, base, fts, a.layers)
        y = root / f"{a.method}.yml"
        label = a.method if a.method != "ties" else "TIES"
        y.write_text(r.to_mergekit_yaml())
        mk_bin = shutil.which("mergekit-yaml") or "mergekit-yaml"
        t_mk = run([mk_bin, str(y), str(root / "out_mk"), "--no-copy-tokenizer",
                    "--no-write-model-card", "--random-seed", "0"], env)
        print(f"mergekit-yaml {label:5s}: {t_mk:7.1f} s", flush=True)
        t_ws = run([sys.executable, "-m", "wsviz.cli", "merge", str(y), "-o",
                    str(root / "out_ws"), "--no-progress"], env)
        from safetensors import safe_open

        worst = 0.0
        mk_files = sorted((root / "out_mk").glob("*.safetensors"))
        ws = {}
        for f in sorted((root / "out_ws").glob("*.safetensors")):
            h = safe_open(str(f), "pt")
            ws.update({k: (h, k) for k in h.keys()})
        count = 0
        for f in mk_files:
            h = safe_open(str(f), "pt")
            for k in h.keys():
                wh, wk = ws[k]
                worst = max(worst, (h.get_tensor(k) - wh.get_tensor(wk)).abs().max().item())
                count += 1
        print(f"threads: {env.get('OMP_NUM_THREADS', 'default')}")
        print(f"wsviz merge {label:7s}: {t_ws:7.1f} s")
        print(f"speed-up           : {t_mk / t_ws:7.1f}x  (goal >= 10x)")
        print(f"identical output   : {count} tensors, max abs diff {worst:.2e} "
              f"({'OK' if worst <= 1e-6 and count == len(ws) else 'MISMATCH'})")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
