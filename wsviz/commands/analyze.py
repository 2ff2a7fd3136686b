"""``wsviz analyze BASE FT [FT...] -o report.parquet|.csv``: the tidy metric table of a model set;
``wsviz analyze MODEL -o spectra.parquet``: the spectra of one checkpoint."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wsviz.errors import AlignmentError, WsvizError


def register(sub) -> None:
    from wsviz.analysis.settings import FAMILIES

    p = sub.add_parser(
        "analyze",
        help="compute deltas, spectra, sign conflicts and mask overlaps per layer",
        description="Stream a base model and its fine-tunes one tensor at a time and write the "
        "tidy metric table (columns layer, block, kind, group, model, metric, value, note) to "
        "a .parquet or .csv file; the whole-model task-vector similarities go to "
        "<output stem>.pairs.<ext>. Results are cached (keyed by checkpoint fingerprints and "
        "settings) so a re-run is instant. With a single checkpoint (no FT) only its spectra "
        "are computed (same table, model column = its label; no pairs file, no cache).",
    )
    p.add_argument("base", metavar="BASE", help="base checkpoint (HF dir or weights file)")
    p.add_argument("finetuned", nargs="*", metavar="FT",
                   help="fine-tuned checkpoints (HF dirs, weight files or PEFT adapter dirs); "
                   "none: spectra of BASE alone")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="output table: report.parquet or report.csv")
    p.add_argument("--labels", help="comma-separated model labels (default: directory names)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache directory (default: $WSVIZ_CACHE_DIR, else "
                   "$XDG_CACHE_HOME/wsviz, else ~/.cache/wsviz)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--k", type=float, default=0.2,
                   help="TIES trim density for sign conflicts (default 0.2 = top 20%%)")
    p.add_argument("--sparsity", type=float, default=0.5,
                   help="sparsity of the magnitude masks compared by IoU (default 0.5)")
    p.add_argument("--intruder-k", type=int, default=10, help="top-k singular vectors tested")
    p.add_argument("--intruder-eps", type=float, default=0.5, help="intruder |cos| threshold")
    p.add_argument("--families", default=",".join(FAMILIES),
                   help=f"comma-separated metric families (default: all of {','.join(FAMILIES)})")
    p.add_argument("--svd-mode", default="auto", choices=["auto", "exact", "gram", "lowrank"],
                   help="singular-value method (default auto: float64 Gram eigvalsh, randomized "
                   "top-k above --max-exact-dim)")
    p.add_argument("--max-exact-dim", type=int, default=16384,
                   help="min(rows, cols) above which 'auto' uses randomized top-k SVD")
    p.add_argument("--exclude", action="append", default=[],
                   help="glob of tensor names to skip (repeatable)")
    p.add_argument("--no-strict", action="store_true",
                   help="analyse the common tensors when the models do not align")
    p.add_argument("--workers", type=int, default=None,
                   help="tensors analysed in parallel (default: 2 on a multi-core CPU, 1 on CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsviz.analysis import AnalysisSettings
    from wsviz.io import ModelSet
    from wsviz.io.outputs import check_output

    out: Path = args.output
    fmt = out.suffix.lower()
    if fmt not in (".parquet", ".csv"):
        raise WsvizError(f"output {out}: use a .parquet or .csv file name")
    single = not args.finetuned
    pairs_out = out.with_name(out.stem + ".pairs" + fmt)
    for p in (out,) if single else (out, pairs_out):  # before hours of analysis: exists /
        check_output(p, [args.base, *args.finetuned], force=args.force,  # an input / a dir
                     kind="file", hint="pass --force to overwrite it")
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    families = tuple(x.strip() for x in args.families.split(",") if x.strip())
    settings = AnalysisSettings(
        k=args.k, sparsity=args.sparsity, intruder_k=args.intruder_k,
        intruder_eps=args.intruder_eps, families=families, svd_mode=args.svd_mode,
        max_exact_dim=args.max_exact_dim,
    )
    if single:
        return _run_single(args, out, fmt, settings, labels)
    try:
        ms = ModelSet.open(args.base, args.finetuned, labels=labels, exclude=args.exclude,
                           strict=not args.no_strict)
    except AlignmentError as e:  # name this command's flag for it
        raise AlignmentError(str(e).replace("open them with strict=False", "pass --no-strict",
                                            1), report=e.report) from None
    if not ms.report.ok:
        print(ms.report.format(), file=sys.stderr)
    t0 = time.perf_counter()
    res = _run_progressive(ms, args, settings)
    dt = time.perf_counter() - t0
    if fmt == ".parquet":
        res.to_parquet(out, overwrite=args.force)
        res._write(pairs_out, args.force, lambda p: res.pairs.to_parquet(p, index=False))
    else:
        res.to_csv(out, overwrite=args.force)
        res._write(pairs_out, args.force, lambda p: res.pairs.to_csv(p, index=False))
    src = "cache" if res.from_cache else f"{res.device}"
    if getattr(res, "resumed", 0):
        src += f", resumed {res.resumed} jobs of an interrupted run"
    print(f"analyzed {len(res.layers)} tensors x {len(res.labels)} models "
          f"({len(res.table)} rows) in {dt:.1f} s [{src}] -> {out}")
    for _, r in res.pairs.iterrows():
        print(f"  task-vector cosine {r['a']} vs {r['b']}: {r['cosine']:+.4f}")
    print(f"  pairs -> {pairs_out}")
    return 0


def _run_progressive(ms, args, settings):
    """Run an :class:`~wsviz.analysis.AnalysisRun`: a progress bar over (tensor, stage) jobs
    and one line when the cheap metrics of every tensor are in."""
    from wsviz.analysis import AnalysisRun

    run = AnalysisRun(ms, device=args.device, settings=settings, cache_dir=args.cache_dir,
                      use_cache=not args.no_cache, workers=args.workers)
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.total, desc="analyze", unit="job", leave=False)
    t0 = time.perf_counter()

    def on_event(e) -> None:
        if bar is not None and e.kind == "job":
            bar.n = e.done
            bar.set_postfix_str(f"{e.stage} {e.name[-40:]}", refresh=True)
        elif e.kind == "cheap" and not args.quiet and e.done < e.total:
            line = (f"cheap metrics (deltas, conflicts, masks) of {len(run.todo)} tensors in "
                    f"{time.perf_counter() - t0:.1f} s; spectra, intruders, subspaces follow")
            (bar.write if bar is not None else print)(line, file=sys.stderr)

    run.subscribe(on_event)
    try:
        res = run.run()
        res.resumed = run.resumed
        return res
    finally:
        if bar is not None:
            bar.close()


def _run_single(args, out: Path, fmt: str, settings, labels) -> int:
    """``wsviz analyze MODEL``: spectra of one checkpoint."""
    from wsviz.analysis import analyze_model
    from wsviz.analysis.engine import _atomic_write

    if labels is not None and len(labels) != 1:
        raise WsvizError(f"--labels: one checkpoint given, {len(labels)} labels")
    if not settings.has("spectra"):
        raise WsvizError("one checkpoint has only spectra to analyse; drop --families or "
                         "include 'spectra' (deltas, conflicts, ... need BASE and FT)")
    t0 = time.perf_counter()
    table = analyze_model(args.base, device=args.device, settings=settings,
                          label=labels[0] if labels else None, progress=not args.quiet)
    dt = time.perf_counter() - t0
    if fmt == ".parquet":
        _atomic_write(out, lambda p: table.to_parquet(p, index=False))
    else:
        _atomic_write(out, lambda p: table.to_csv(p, index=False))
    n = table["layer"].nunique()
    print(f"spectra of {n} tensors of {args.base} ({len(table)} rows) in {dt:.1f} s -> {out}")
    alpha = table[(table.metric == "alpha")].value.dropna()
    if len(alpha):
        print(f"  ESD power-law alpha: median {alpha.median():.2f} over {len(alpha)} matrices "
              f"(WeightWatcher: 2-6 is well trained)")
    return 0
