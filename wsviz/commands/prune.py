"""``wsviz prune MODEL --method ... --sparsity S -o OUTDIR``: prune a checkpoint with the
analysis engine's masks (magnitude, random, N:M, structured, Wanda), streaming per tensor."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

from wsviz.commands._types import size_arg
from wsviz.errors import WsvizError

METHODS = ("magnitude", "random", "2:4", "structured", "wanda")
PRUNABLE_KINDS = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "mlp_up", "mlp_gate",
                  "mlp_down")


def register(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a checkpoint (magnitude, random, N:M, structured, Wanda)",
        description="Zero the pruned weights of MODEL (an HF dir or checkpoint file, e.g. a "
        "merged model) and write an HF directory atomically. By default the 2-D weights of "
        "the attention and MLP projections inside the blocks are pruned; --include selects "
        "others by glob. --schedule sets per-layer sparsity like a mergekit parameter: a "
        "gradient over the blocks '[0.3, 0.7]' or filters "
        "'[{filter: mlp, value: 0.7}, {value: 0.5}]' (YAML/JSON).",
    )
    p.add_argument("model", metavar="MODEL", help="HF model dir or checkpoint file")
    p.add_argument("--method", required=True,
                   help="magnitude | random | N:M (e.g. 2:4) | structured | wanda")
    p.add_argument("--sparsity", type=float, default=None,
                   help="fraction of weights to prune, in [0, 1] (not for N:M)")
    p.add_argument("--schedule", default=None,
                   help="per-layer sparsity: gradient list or filter list (YAML/JSON)")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output directory")
    p.add_argument("--force", action="store_true", help="replace an existing OUTDIR")
    p.add_argument("--include", action="append", default=None, metavar="GLOB",
                   help="prune tensors matching GLOB (repeatable) instead of the default set")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="never prune tensors matching GLOB (repeatable)")
    p.add_argument("--dim", type=int, default=0,
                   help="structured: 0 prunes rows (output channels), 1 columns")
    p.add_argument("--calib", default=None,
                   help="wanda: calibration input, a .pt tensor of token ids [batch, seq] or "
                   "a .txt file (one sample per line, tokenized with MODEL's tokenizer)")
    p.add_argument("--seed", type=int, default=0, help="random: seed [0]")
    p.add_argument("--device", default=None, help="compute device (cpu, cuda, ...)")
    p.add_argument("--shard-size", default="2GB", type=size_arg,
                   help="max bytes per output shard, e.g. 500MB, 2GB [2GB]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _schedule(text: str | None, sparsity: float | None):
    import yaml

    from wsviz.recipes.schedule import check_setting_shape, setting_scalars

    if text is None:
        return sparsity
    try:
        setting = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise WsvizError(f"--schedule is not valid YAML/JSON: {e}") from None
    check_setting_shape(setting, "--schedule")
    for v in setting_scalars(setting):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise WsvizError(f"--schedule value {v!r} is not a sparsity in [0, 1]")
    return setting


def wanda_norms(model_path: str, calib: str, device=None) -> dict:
    """``{module_name: ||X_j||_2 [in]}`` of every Linear of MODEL on the calibration input."""
    import torch

    from wsviz.compute.masks import collect_input_norms

    p = Path(calib)
    if not p.is_file():
        raise WsvizError(f"--calib {calib}: no such file")
    try:
        from transformers import AutoModel, AutoModelForCausalLM
        try:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        except Exception:
            model = AutoModel.from_pretrained(model_path, dtype=torch.float32)
    except Exception as e:
        raise WsvizError(f"wanda needs MODEL loadable by transformers ({e})") from None
    model.eval().to(device or "cpu")
    if p.suffix in (".pt", ".pth"):
        ids = torch.load(p, weights_only=True)
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
            raise WsvizError(f"--calib {calib}: expected an integer tensor of token ids")
        batch = {"input_ids": ids.long().reshape(-1, ids.shape[-1]).to(device or "cpu")}
    else:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(model_path)
        except Exception as e:
            raise WsvizError(f"--calib text needs MODEL's tokenizer ({e}); give token ids "
                             f"as a .pt tensor instead") from None
        lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
        batch = dict(tok(lines, return_tensors="pt", padding=True, truncation=True))
        batch = {k: v.to(device or "cpu") for k, v in batch.items()}
    return collect_input_norms(model, batch)


def _norm_for(name: str, norms: dict):
    stem = name[: -len(".weight")] if name.endswith(".weight") else name
    for m, v in norms.items():
        if m and (stem == m or stem.endswith("." + m) or m.endswith("." + stem)):
            return v
    return None


def run(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from wsviz.compute import masks
    from wsviz.io import open_source, parse_layer_name
    from wsviz.io.outputs import check_output
    from wsviz.io.writer import HFDirWriter
    from wsviz.recipes.schedule import evaluate_setting, layer_positions

    method = args.method.lower()
    nm = re.fullmatch(r"(\d+):(\d+)", method)
    if method not in METHODS and not nm:
        raise WsvizError(f"unknown prune method {args.method!r}; valid: {', '.join(METHODS)} "
                         f"(or any N:M)")
    if nm:
        n, m = int(nm.group(1)), int(nm.group(2))
        if args.sparsity is not None or args.schedule is not None:
            raise WsvizError(f"{method} has a fixed sparsity of 1 - {n}/{m}; drop --sparsity")
        setting = None
    else:
        if args.sparsity is None and args.schedule is None:
            raise WsvizError("give --sparsity S (fraction to prune) or --schedule")
        if args.sparsity is not None:
            masks.check_sparsity(args.sparsity)
        setting = _schedule(args.schedule, args.sparsity)
    if method == "wanda" and not args.calib:
        raise WsvizError("wanda needs calibration data: --calib FILE (.pt token ids or .txt)")
    inputs = [args.model, args.calib]
    out = check_output(args.out, inputs, force=args.force)
    src = open_source(args.model)
    infos = src.infos()
    aliases = src.aliases()
    names = [n for n in infos if n not in aliases]
    tpos = layer_positions(names)
    dev = torch.device(args.device) if args.device else torch.device("cpu")
    norms = wanda_norms(args.model, args.calib, dev) if method == "wanda" else None
    gen = torch.Generator(device=dev).manual_seed(args.seed) if method == "random" else None

    def selected(name: str) -> bool:
        if any(fnmatch.fnmatchcase(name, g) for g in args.exclude):
            return False
        if args.include:
            return any(fnmatch.fnmatchcase(name, g) for g in args.include)
        ln = parse_layer_name(name)
        return (ln.block is not None and ln.kind in PRUNABLE_KINDS and ln.param == "weight"
                and len(infos[name].shape) == 2)

    report = {}
    kept_total = pruned_total = 0
    path = Path(args.model)
    copy_from = path if path.is_dir() else None
    bar = tqdm(total=len(names), desc="prune", unit="tensor", disable=args.no_progress)
    with HFDirWriter(out, force=args.force, copy_from=copy_from,
                     max_shard_bytes=args.shard_size, inputs=inputs + src.files()) as w:
        for name in names:
            t = src.get(name)
            if selected(name) and t.is_floating_point():
                x = t.to(dev)
                if nm:
                    mask = masks.nm_mask(x, n, m)
                else:
                    s = evaluate_setting(setting, name, tpos.get(name, 0.0), float)
                    if s is None:
                        s = 0.0 if args.sparsity is None else args.sparsity
                    if method == "magnitude":
                        mask = masks.magnitude_mask(x, s)
                    elif method == "random":
                        mask = masks.random_mask(x, s, generator=gen)
                    elif method == "structured":
                        mask = masks.structured_mask(x, s, dim=args.dim)
                    else:
                        nrm = _norm_for(name, norms)
                        if nrm is None:
                            raise WsvizError(f"wanda: no calibration activations reached "
                                             f"{name}; exclude it with --exclude")
                        mask = masks.wanda_mask(x, nrm.to(dev), s)
                x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=dev))
                k = int(mask.sum())
                kept_total += k
                pruned_total += mask.numel() - k
                report[name] = round(1 - k / max(1, mask.numel()), 6)
                t = x.to("cpu")
            w.add(name, t)
            bar.update(1)
        w.write_text("wsviz_prune.json", json.dumps({
            "model": str(args.model), "method": method, "sparsity": args.sparsity,
            "schedule": setting if args.schedule else None, "seed": args.seed,
            "achieved": report}, indent=2))
    bar.close()
    if not report:
        print(f"wrote {out} (warning: no tensor was selected for pruning)")
        return 0
    overall = pruned_total / max(1, kept_total + pruned_total)
    print(f"wrote {out}: pruned {len(report)} tensors, sparsity {overall:.4f} over them")
    return 0
