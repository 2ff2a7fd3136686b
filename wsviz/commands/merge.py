"""``wsviz merge RECIPE -o OUTDIR``: run a recipe (.json wsviz / .yml mergekit) to an HF dir."""

from __future__ import annotations

import sys

from wsviz.commands._types import size_arg
from wsviz.errors import WsvizError


def register(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="merge checkpoints as a recipe says (wsviz .json or mergekit .yml)",
        description="Merge checkpoints tensor by tensor (bounded memory) as RECIPE says and "
        "write an HF directory (sharded safetensors, config/tokenizer files copied from the "
        "base, the recipe saved beside). The output appears atomically; an existing OUTDIR "
        "is refused without --force. mergekit YAML gives the same tensors as mergekit.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe file: .json (wsviz) or .yml (mergekit)")
    p.add_argument("-o", "--out", metavar="OUTDIR", help="output directory")
    p.add_argument("--force", action="store_true", help="replace an existing OUTDIR")
    p.add_argument("--device", default=None, help="compute device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of random methods (dare/della); same as mergekit's --random-seed")
    p.add_argument("--shard-size", default="2GB", type=size_arg,
                   help="max bytes per output shard, e.g. 500MB, 2GB [2GB]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--prune", default=None, metavar="PRUNE_RECIPE",
                   help="prune the merge before writing it (a prune recipe .yml/.json as "
                   "`wsviz prune --recipe` takes, e.g. the dashboard's wsviz_prune.yml): merges "
                   "in memory (every input model is held), exactly as the dashboard's 'prune "
                   "the current merge' export")
    p.add_argument("--calib", default=None, metavar="FILE",
                   help="with --prune and a wanda recipe: calibration input (.pt token ids "
                   "[batch, seq] or .txt), run through the merged model")
    p.add_argument("--to-yaml", action="store_true",
                   help="print the recipe as a mergekit YAML and exit (no merge)")
    p.add_argument("--to-json", action="store_true",
                   help="print the recipe as a wsviz JSON recipe and exit (no merge)")
    p.set_defaults(func=run)


def run(args) -> int:
    from wsviz.recipes import Recipe, merge_to_dir

    recipe = Recipe.load(args.recipe)
    if args.seed is not None:
        recipe.seed = args.seed
    recipe.validate()
    if args.to_yaml:
        sys.stdout.write(recipe.to_mergekit_yaml())
        return 0
    if args.to_json:
        sys.stdout.write(recipe.to_json() + "\n")
        return 0
    if not args.out:
        raise WsvizError("give the output directory with -o OUTDIR")
    if args.prune is not None:
        return _merge_prune(recipe, args)
    if args.calib is not None:
        raise WsvizError("--calib calibrates a wanda --prune recipe; add --prune FILE or drop "
                         "--calib")
    out = merge_to_dir(recipe, args.out, force=args.force, device=args.device,
                       progress=not args.no_progress, max_shard_bytes=args.shard_size,
                       inputs=[args.recipe])
    print(f"wrote {out}")
    return 0


def _merge_prune(recipe, args) -> int:
    """``--prune``: :func:`wsviz.session.pipeline.merge_prune_to_dir` with a progress bar."""
    from tqdm.auto import tqdm

    from wsviz.recipes.prune import PruneRecipe
    from wsviz.session.pipeline import merge_prune_to_dir

    prune = PruneRecipe.load(args.prune)
    if args.calib is not None:
        if prune.method != "wanda":
            raise WsvizError(f"--calib is for wanda; {args.prune} prunes by {prune.method}")
        prune.calib = args.calib
    elif prune.method == "wanda" and prune.calib is None:
        raise WsvizError("wanda needs calibration data: --calib FILE (.pt token ids or .txt)")
    bars = []

    def progress(i, total):
        if not bars:
            bars.append(tqdm(total=total, desc="merge+prune", unit="tensor",
                             disable=args.no_progress))
        bars[0].update(1)

    try:
        out, report = merge_prune_to_dir(
            recipe, prune, args.out, force=args.force, device=args.device,
            max_shard_bytes=args.shard_size, progress=progress,
            inputs=[args.recipe, args.prune, prune.calib])
    finally:
        for b in bars:
            b.close()
    print(f"wrote {out}: merged, then pruned {len(report)} tensors with {prune.describe()}")
    return 0
