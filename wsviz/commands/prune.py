"""``wsviz prune MODEL (--recipe prune.yml | --method ... --sparsity S) -o OUTDIR``: prune a
checkpoint with :mod:`wsviz.recipes.prune` (the same code as the dashboard's prune tuner),
streaming per tensor; ``--save-recipe`` writes the recipe used."""

from __future__ import annotations

from wsviz.commands._types import size_arg
from wsviz.errors import RecipeError, WsvizError

#: flags that describe the recipe (refused together with --recipe)
RECIPE_FLAGS = ("method", "sparsity", "schedule", "scope", "include", "exclude", "dim", "seed")


def register(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a checkpoint (magnitude, random, N:M, structured, Wanda)",
        description="Zero the pruned weights of MODEL (an HF dir or checkpoint file, e.g. a "
        "merged model) and write an HF directory atomically. Give a prune recipe "
        "(--recipe prune.yml) or the flags below. By default every 2-D weight matrix except "
        "embeddings, output heads and norms is pruned; --include selects others by glob, "
        "--exclude removes some. --schedule sets per-layer sparsity like a mergekit "
        "parameter: a gradient over the blocks '[0.3, 0.7]' or filters "
        "'[{filter: mlp, value: 0.7}, {value: 0.5}]' (YAML/JSON); tensors it does not cover "
        "get --sparsity (or stay dense).",
    )
    p.add_argument("model", metavar="MODEL", help="HF model dir or checkpoint file")
    p.add_argument("--recipe", default=None, metavar="FILE",
                   help="prune recipe (.yml/.yaml/.json); excludes the recipe flags below")
    p.add_argument("--method", default=None,
                   help="magnitude | random | structured | wanda | N:M (e.g. 2:4)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="fraction of weights to prune, in [0, 1] (not for N:M)")
    p.add_argument("--schedule", default=None,
                   help="per-layer sparsity: gradient list or filter list (YAML/JSON)")
    p.add_argument("--scope", default=None, choices=("layer", "row", "global"),
                   help="magnitude: rank within each layer [layer], each output row, or one "
                   "threshold over all pruned layers (global)")
    p.add_argument("-o", "--out", default=None, metavar="OUTDIR", help="output directory")
    p.add_argument("--save-recipe", default=None, metavar="FILE",
                   help="also write the recipe used (.yml/.yaml or .json); alone (no -o) it "
                   "only validates and saves the recipe")
    p.add_argument("--force", action="store_true",
                   help="replace an existing OUTDIR / --save-recipe file")
    p.add_argument("--include", action="append", default=None, metavar="GLOB",
                   help="prune tensors matching GLOB (repeatable) instead of the default set")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB",
                   help="never prune tensors matching GLOB (repeatable)")
    p.add_argument("--dim", type=int, default=None,
                   help="structured: 0 prunes rows (output channels) [0], 1 columns")
    p.add_argument("--calib", default=None,
                   help="wanda: calibration input, a .pt tensor of token ids [batch, seq] or "
                   "a .txt file (one sample per line, tokenized with MODEL's tokenizer)")
    p.add_argument("--seed", type=int, default=None, help="random: seed [0]")
    p.add_argument("--device", default=None, help="compute device (cpu, cuda, ...)")
    p.add_argument("--shard-size", default="2GB", type=size_arg,
                   help="max bytes per output shard, e.g. 500MB, 2GB [2GB]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _schedule(text: str | None):
    import yaml

    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        msg = str(e).replace("\n", " ")
        raise WsvizError(f"--schedule is not valid YAML/JSON ({msg}); write e.g. '[0.3, 0.7]' "
                         "or '[{filter: mlp, value: 0.7}]'") from None


def recipe_from_args(args):
    """The :class:`PruneRecipe` of ``--recipe`` or of the flags (RecipeError naming the
    flag; ``prune recipe: key`` names map to ``--key``)."""
    from wsviz.recipes.prune import PruneRecipe, parse_method

    if args.recipe:
        given = [f"--{k}" for k in RECIPE_FLAGS if getattr(args, k) is not None]
        if given:
            raise WsvizError(f"--recipe sets the recipe; drop {', '.join(given)} (or edit "
                             f"{args.recipe})")
        recipe = PruneRecipe.load(args.recipe)
        if args.calib is not None:
            if recipe.method != "wanda":
                raise WsvizError(f"--calib is for wanda; {args.recipe} prunes by "
                                 f"{recipe.method}")
            recipe.calib = args.calib
        return recipe
    if args.method is None:
        raise WsvizError("give --recipe FILE or --method (magnitude, random, structured, "
                         "wanda, N:M)")
    try:
        method, n, m = parse_method(args.method)
    except RecipeError as e:
        raise RecipeError(f"--method: {str(e).removeprefix('prune recipe: ')}") from None
    kw = {"method": method, "include": args.include, "exclude": args.exclude or []}
    if n is not None:
        kw.update(n=n, m=m)
    for k in ("sparsity", "scope", "dim", "seed", "calib"):
        v = getattr(args, k)
        if v is not None:
            kw[k] = v
    kw["schedule"] = _schedule(args.schedule)
    if method == "nm" and (args.sparsity is not None or args.schedule is not None):
        raise WsvizError(f"{args.method} has a fixed sparsity of 1 - {n}/{m}; drop --sparsity "
                         "/ --schedule")
    if method == "wanda" and args.calib is None:
        raise WsvizError("wanda needs calibration data: --calib FILE (.pt token ids or .txt)")
    if method != "nm" and args.sparsity is None and args.schedule is None:
        raise WsvizError("give --sparsity S (fraction to prune, in [0, 1]) or --schedule")
    try:
        return PruneRecipe(**kw).validate()
    except RecipeError as e:
        msg = str(e).removeprefix("prune recipe: ")
        for k in RECIPE_FLAGS:
            if msg.startswith((f"{k}=", f"{k} ", f"{k}:")):
                msg = "--" + msg
                break
        raise RecipeError(msg) from None


def run(args) -> int:
    from tqdm.auto import tqdm

    from wsviz.recipes.prune import prune_to_dir

    recipe = recipe_from_args(args)
    if args.out is None and args.save_recipe is None:
        raise WsvizError("give -o OUTDIR (and/or --save-recipe FILE)")
    inputs = [args.model, args.recipe, recipe.calib]
    if args.save_recipe:
        from wsviz.io.outputs import check_output

        if args.out is not None:  # the output dir may not swallow the saved recipe, nor v.v.
            check_output(args.out, [args.save_recipe], force=args.force)
        recipe.save(args.save_recipe, force=args.force, inputs=inputs)
        print(f"wrote {args.save_recipe}")
    if args.out is None:
        return 0
    bars = []

    def progress(i, total):  # the bar starts with the first tensor (after all checks)
        if not bars:
            bars.append(tqdm(total=total, desc="prune", unit="tensor",
                             disable=args.no_progress))
        bars[0].update(1)

    try:
        out, report = prune_to_dir(recipe, args.model, args.out, force=args.force,
                                   device=args.device, max_shard_bytes=args.shard_size,
                                   inputs=[args.recipe, args.save_recipe], progress=progress)
    finally:
        for b in bars:
            b.close()
    if not report:
        print(f"wrote {out} (warning: no tensor was selected for pruning)")
        return 0
    from wsviz.io import open_source

    src = open_source(out)
    sizes = {n: src.info(n).numel for n in report}
    pruned = sum(report[n] * sizes[n] for n in report)
    overall = pruned / max(1, sum(sizes.values()))
    print(f"wrote {out}: pruned {len(report)} tensors with {recipe.describe()}, sparsity "
          f"{overall:.4f} over them")
    return 0
