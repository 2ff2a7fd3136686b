"""``wsviz soup``: greedy soup (Wortsman et al., 2022) — a search over an evaluator whose result
is a ``linear`` recipe of the models it keeps."""

from __future__ import annotations

from pathlib import Path

from wsviz.errors import WsvizError


def register(sub) -> None:
    p = sub.add_parser(
        "soup",
        help="greedy soup: add models best-first while the evaluator's held-out metric improves",
        description="Score every model alone with the evaluator, sort them best first, and add "
        "each to the soup (the uniform average) only if the soup's metric strictly improves — "
        "in the metric's direction (perplexity and loss are minimised). Prints the trials and "
        "the kept models; -o writes the soup as a linear recipe (wsviz merge / mergekit). Give "
        "the evaluator held-out data, not the test set.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="BASE then the fine-tuned checkpoints (the soup's candidates)")
    p.add_argument("--demo", action="store_true",
                   help="the demo zoo's task models, scored on the zoo's training split")
    p.add_argument("--eval", dest="eval", default=None, metavar="SPEC",
                   help="'zoo', module:function, file.py:function or a text file (perplexity)")
    p.add_argument("--metric", default=None,
                   help="metric to optimise (default: the evaluator's primary metric)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="write the soup recipe (.json wsviz recipe or .yml mergekit config)")
    p.add_argument("--force", action="store_true", help="overwrite the output")
    p.add_argument("--device", default=None, help="torch device for merging / evaluation")
    p.set_defaults(func=run)


def run(args) -> int:
    from wsviz.eval import greedy_soup
    from wsviz.eval.metrics import primary_metric
    from wsviz.recipes import InMemoryMerger
    from wsviz.session.open import load_evaluator

    if args.output is not None:
        if args.output.suffix not in (".json", ".yml", ".yaml"):
            raise WsvizError(f"-o {args.output}: write a .json recipe or a .yml mergekit config")
        from wsviz.io.outputs import check_output

        check_output(args.output, args.paths, force=args.force, kind="recipe",
                     hint="pass --force to overwrite it")
    if args.demo:
        from wsviz.zoo import ensure_zoo

        zoo = ensure_zoo()
        ms = zoo.modelset()
        evaluator = (zoo.evaluator(split="train", device=args.device)
                     if args.eval in (None, "zoo")
                     else load_evaluator(args.eval, ms, device=args.device))
    else:
        if len(args.paths) < 3:
            raise WsvizError("give BASE and at least two fine-tuned checkpoints (or --demo)")
        if not args.eval:
            raise WsvizError("give an evaluator with --eval SPEC (held-out data)")
        from wsviz.io import ModelSet

        ms = ModelSet.open(args.paths[0], args.paths[1:])
        evaluator = load_evaluator(args.eval, ms, device=args.device)
    names = getattr(evaluator, "names", None)
    merger = InMemoryMerger(ms, device=args.device, names=names)
    recipe, hist = greedy_soup(evaluator, merger, metric=args.metric)
    spec = primary_metric(evaluator, name=str(hist.metric.iloc[0]))
    print(f"greedy soup on {spec.label}:")
    for _, r in hist.iterrows():
        mark = "kept" if r.accepted else "dropped"
        print(f"  {r.model:24s} alone {spec.format(r.individual):>10s}   soup "
              f"{spec.format(r.score):>10s}   {mark}")
    print(f"soup: {', '.join(recipe.labels)}")
    if args.output is not None:
        paths = merger.paths()
        if args.output.suffix == ".json":
            text = recipe.with_paths(paths).to_json()
        else:
            text = recipe.to_mergekit_yaml(paths=paths)
        from wsviz.io.outputs import atomic_write

        atomic_write(args.output, lambda p: p.write_text(text), force=args.force)
        print(f"  -> {args.output}")
    return 0
