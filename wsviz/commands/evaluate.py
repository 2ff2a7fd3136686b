"""``wsviz evaluate``: merge a recipe in memory and print live metrics (optionally a sweep)."""

from __future__ import annotations

import math

from wsviz.errors import WsvizError


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="merge a recipe in memory and evaluate it (optionally sweep 1-2 parameters)",
        description="Merge RECIPE in memory (no files written) and print per-task metrics. "
        "With --demo the model set is the built-in zoo (recipe models are task names; default "
        "recipe: task arithmetic λ=0.5 over all tasks; default evaluator: the zoo's). "
        "--sweep PARAM=VALUES (twice at most) evaluates a grid, e.g. --sweep lambda=0:1:0.1 "
        "--sweep density=0.2,0.5.",
    )
    p.add_argument("recipe", nargs="?", metavar="RECIPE",
                   help="recipe file: .json (wsviz) or .yml (mergekit)")
    p.add_argument("--demo", action="store_true", help="use the built-in demo zoo")
    p.add_argument("--eval", dest="eval", default=None, metavar="SPEC",
                   help="'zoo', module:function, file.py:function, or a text file (perplexity "
                        "of the base model's directory architecture)")
    p.add_argument("--sweep", action="append", default=[], metavar="PARAM=VALUES",
                   help="values as a,b,c or start:stop:step (inclusive); PARAM as in "
                        "wsviz.eval.set_param (lambda, density, models.<label>.weight)")
    p.add_argument("--metric", default=None, help="metric to print for sweeps [first one]")
    p.add_argument("--device", default=None, help="torch device for merging / evaluation")
    p.set_defaults(func=run)


def parse_values(text: str) -> list:
    """``"a,b,c"`` or ``"start:stop:step"`` (inclusive) -> values (floats, ints or bools)."""
    def one(s: str):
        s = s.strip()
        if s.lower() in ("true", "false"):
            return s.lower() == "true"
        try:
            return int(s) if s.lstrip("-").isdigit() else float(s)
        except ValueError:
            raise WsvizError(f"--sweep value {s!r} is not a number or true/false") from None

    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise WsvizError(f"--sweep range {text!r}: write start:stop:step")
        a, b, st = (float(one(x)) for x in parts)
        if st <= 0 or b < a:
            raise WsvizError(f"--sweep range {text!r}: need start <= stop and step > 0")
        n = int(math.floor((b - a) / st + 1e-9)) + 1
        return [round(a + i * st, 10) for i in range(n)]
    vals = [one(x) for x in text.split(",") if x.strip()]
    if not vals:
        raise WsvizError(f"--sweep {text!r} has no values")
    return vals


def run(args) -> int:
    from wsviz.eval import evaluate_recipe, make_evaluator, mean_metrics, sweep
    from wsviz.recipes import InMemoryMerger, Recipe

    if args.demo:
        from wsviz.zoo import ensure_zoo
        from wsviz.zoo.table import zoo_recipe

        zoo = ensure_zoo()
        ms = zoo.modelset()
        recipe = Recipe.load(args.recipe) if args.recipe else zoo_recipe(
            zoo.tasks, "task_arithmetic")
        evaluator = (zoo.evaluator(device=args.device) if args.eval in (None, "zoo")
                     else make_evaluator(args.eval, ms, device=args.device))
    else:
        if not args.recipe:
            raise WsvizError("give a RECIPE file (or --demo)")
        if not args.eval:
            raise WsvizError("give an evaluator with --eval SPEC (module:function or a text file)")
        from wsviz.io import ModelSet

        recipe = Recipe.load(args.recipe)
        labels = recipe.labels
        base = recipe.base or labels[0]
        ms = ModelSet.open(base, labels, labels=labels)
        evaluator = make_evaluator(args.eval, ms, device=args.device)
    recipe.validate()
    names = getattr(evaluator, "names", None)
    merger = InMemoryMerger(ms, device=args.device, names=names)
    if not args.sweep:
        res = evaluate_recipe(recipe, evaluator, merger)
        metrics = list(dict.fromkeys(m for ms_ in res.values() for m in ms_))
        print(f"{'task':12s}" + "".join(f"{m:>22s}" for m in metrics))
        for t, ms_ in res.items():
            print(f"{t:12s}" + "".join(f"{ms_.get(m, float('nan')):22.4f}" for m in metrics))
        mm = mean_metrics(res)
        print(f"{'mean':12s}" + "".join(f"{mm.get(m, float('nan')):22.4f}" for m in metrics))
        return 0
    grid = {}
    for s in args.sweep:
        if "=" not in s:
            raise WsvizError(f"--sweep {s!r}: write PARAM=VALUES")
        k, v = s.split("=", 1)
        grid[k.strip()] = parse_values(v)
    df = sweep(recipe, grid, evaluator, merger, progress=True)
    metric = args.metric or df["metric"].iloc[0]
    if metric not in set(df["metric"]):
        raise WsvizError(f"--metric {metric!r}: the evaluator reports {sorted(set(df.metric))}")
    table = df[df.metric == metric].pivot_table(index=list(grid), columns="task", values="value",
                                                sort=False)
    print(f"{metric}:")
    print(table.to_string(float_format=lambda x: f"{x:.4f}"))
    return 0
