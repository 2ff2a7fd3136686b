"""``wsviz info PATH [PATH...]``: tensors, grouping and parameter counts of checkpoints."""

from __future__ import annotations

import argparse
from collections import defaultdict

from wsviz.textsafe import escape_controls


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="show tensors, layer grouping and parameter counts of checkpoints",
        description="Print the tensors, block/kind grouping and parameter counts of one or "
        "more checkpoints; with several, the first is the base and the alignment "
        "report of the others against it is printed too.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="HF model dir, PEFT adapter dir, .safetensors/.bin/.pt/.pth file")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.add_argument("--fingerprint", action="store_true", help="print content fingerprints")
    p.set_defaults(func=run)


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def describe(src, tensors: bool = False, fingerprint: bool = False) -> str:
    """Multi-line description of one source (counts per block and kind)."""
    from wsviz.io import parse_layer_name

    infos = src.infos()
    aliases = src.aliases()
    lines = [f"{src.where()}  [{type(src).__name__.replace('Source', '')}"
             + (f", {src.format}" if hasattr(src, "format") else "") + "]"]
    total = src.num_params()
    dtypes = sorted({str(i.dtype).replace("torch.", "") for i in infos.values()})
    lines.append(f"  {len(infos)} tensors, {total:,} parameters ({_human(total)}), "
                 f"dtypes: {', '.join(dtypes)}")
    if aliases:
        lines.append("  tied: " + ", ".join(f"{a} -> {c}" for a, c in aliases.items()))
    by_kind: dict[str, int] = defaultdict(int)
    blocks: set[int] = set()
    for n, i in infos.items():
        if n in aliases:
            continue
        ln = parse_layer_name(n)
        by_kind[ln.kind] += i.numel
        if ln.block is not None:
            blocks.add(ln.block)
    lines.append(f"  blocks: {len(blocks)}" + (f" ({min(blocks)}..{max(blocks)})" if blocks else ""))
    lines.append("  parameters by kind: " + ", ".join(
        f"{k}={_human(v)}" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])))
    if fingerprint:
        lines.append(f"  fingerprint: {src.fingerprint()}")
    if tensors:
        for n, i in infos.items():
            ln = parse_layer_name(n)
            blk = "-" if ln.block is None else str(ln.block)
            lines.append(f"    {n:64s} {tuple(i.shape)!s:>18s} "
                         f"{str(i.dtype).replace('torch.', ''):>9s}  block={blk:>3s} {ln.kind}")
    return "\n".join(escape_controls(ln) for ln in lines)  # a name's "\n" stays on its line


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wsviz.io import ModelSet, open_source

    sources = []
    base = None
    for i, path in enumerate(tqdm(args.paths, desc="opening", unit="ckpt",
                                   disable=len(args.paths) < 3, leave=False)):
        src = open_source(path, base=base)
        if i == 0:
            base = src
        sources.append(src)
    for src in sources:
        print(describe(src, tensors=args.tensors, fingerprint=args.fingerprint))
    if len(sources) > 1:
        ms = ModelSet.open(sources[0], sources[1:], strict=False)
        ms.report.base = str(args.paths[0])  # name the base by its path, not its label
        print(ms.report.format())
        print(f"  aligned tensors: {len(ms.names)} ({ms.num_params():,} parameters)")
        return 0 if ms.report.ok else 1
    return 0
