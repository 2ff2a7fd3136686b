"""``wsviz evaluate``: merge a recipe in memory and print live metrics (optionally a sweep),
or evaluate checkpoints themselves (``wsviz evaluate pruned/ merged/ --eval ppl:text.txt``)."""

from __future__ import annotations

import math
from pathlib import Path

from wsviz.errors import WsvizError
from wsviz.session.args import add_eval_options, eval_options


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a recipe merged in memory (optionally sweep 1-2 parameters) or "
        "model directories",
        description="Merge RECIPE in memory (no files written) and print per-task metrics; "
        "or give one or more MODEL directories (e.g. a pruned or merged model) to evaluate "
        "them as they are (several: one table row each). "
        "With --demo the model set is the built-in zoo (recipe models are task names; default "
        "recipe: task arithmetic λ=0.5 over all tasks; default evaluator: the zoo's). "
        "--sweep PARAM=VALUES (twice at most) evaluates a grid, e.g. --sweep lambda=0:1:0.1 "
        "--sweep density=0.2,0.5.",
    )
    p.add_argument("recipe", nargs="*", metavar="RECIPE|MODEL",
                   help="recipe file: .json (wsviz) or .yml (mergekit); or model directories "
                   "(HF, with config.json) to evaluate as they are")
    p.add_argument("--demo", action="store_true", help="use the built-in demo zoo")
    p.add_argument("--eval", dest="eval", default=None, metavar="SPEC",
                   help="'zoo', ppl:TEXT_FILE (perplexity; a bare text file works too), "
                        "mc:FILE.jsonl, lm-eval:TASK[,TASK], module:function or "
                        "file.py:function; LLM evaluators run the base model's directory")
    p.add_argument("--sweep", action="append", default=[], metavar="PARAM=VALUES",
                   help="values as a,b,c or start:stop:step (inclusive); PARAM as in "
                        "wsviz.eval.set_param (lambda, density, models.<label>.weight)")
    p.add_argument("--references", action="store_true",
                   help="also evaluate the base (pre-trained) and every fine-tune on their own "
                        "and print them beside the merge")
    add_eval_options(p)
    p.add_argument("--device", default=None, help="torch device for merging / evaluation")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (running estimate ± standard error) on stderr; the "
                        "bar shows only when stderr is a terminal")
    p.set_defaults(func=run)


SPECS = "ppl:text.txt, mc:file.jsonl, lm-eval:TASK, module:function"


def _model_targets(paths: list[str]) -> list[str]:
    """The paths when they name model directories (not a recipe file); [] for a recipe or
    nothing. WsvizError for a mix, for several recipes, or for a missing path."""
    from pathlib import Path

    if not paths:
        return []
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise WsvizError(f"{missing[0]}: no such recipe file or model directory")
    dirs = [p for p in paths if Path(p).is_dir()]
    if not dirs:
        if len(paths) > 1:
            raise WsvizError(f"give one RECIPE file, not {len(paths)}: {' '.join(paths)}")
        return []
    if len(dirs) != len(paths):
        raise WsvizError("give either one RECIPE file or model directories, not both: "
                         + " ".join(p for p in paths if p not in dirs))
    return dirs


def _evaluate_models(dirs: list[str], args, opts: dict) -> int:
    """Evaluate each model directory as it is (the LLM evaluators run it directly; other
    evaluators get its tensors) and print one block, or one table row per model."""
    from wsviz.eval import make_evaluator
    from wsviz.eval.metrics import declare_metric
    from wsviz.io import open_source

    if args.demo or args.sweep or args.references:
        raise WsvizError("model directories are evaluated as they are: drop --demo, --sweep "
                         "and --references (they apply to a RECIPE)")
    if not args.eval:
        raise WsvizError(f"give an evaluator with --eval SPEC ({SPECS})")
    rows, evaluator, said = {}, None, set()
    for d in dirs:
        evaluator = make_evaluator(args.eval, device=args.device, model_dir=d, **opts)
        if args.metric:
            declare_metric(evaluator, args.metric)
        if hasattr(evaluator, "lm"):  # runs the directory's own model and weights
            weights = {}
        else:
            src = open_source(d)
            names = getattr(evaluator, "names", None) or list(src.infos())
            weights = {n: src.get(n, device=args.device) for n in names}
        rows[d] = _progressive(evaluator, weights, args, desc=Path(d).name)
        if getattr(evaluator, "description", None) not in said:  # once when all agree
            said.add(getattr(evaluator, "description", None))
            _describe(evaluator)
    if len(rows) == 1:
        _print_results(next(iter(rows.values())), evaluator)
    else:
        _print_model_table(rows, evaluator)
    return 0


def _bar(evaluator, args, desc: str):
    """The progress-bar callback (:func:`wsviz.eval.progressive.progress_bar`), or None with
    ``--no-progress`` or when stderr is not a terminal."""
    import sys

    if getattr(args, "no_progress", False) or not sys.stderr.isatty():
        return None
    from wsviz.eval.progressive import progress_bar

    return progress_bar(evaluator, getattr(args, "metric", None), enabled=True, desc=desc)


def _progressive(evaluator, weights, args, desc: str):
    """``evaluator.evaluate(weights)``, through the progressive stream with a bar when on."""
    from wsviz.eval.progressive import evaluate_progressive

    bar = _bar(evaluator, args, desc)
    if bar is None:
        return evaluator.evaluate(weights)
    try:
        return evaluate_progressive(evaluator, weights, on_partial=bar)
    finally:
        bar.close()


def _describe(evaluator) -> None:
    """The evaluator's own account of what it scored (perplexity: tokens, window, stride)."""
    text = getattr(evaluator, "description", None)
    if text:
        print(f"# {text}")


def _cell(spec, value: float, width: int) -> str:
    """``value`` right-aligned: a count as an integer, a metric with 4 decimals."""
    if spec.is_count:
        return f"{round(value):{width}d}" if value == value else f"{'–':>{width}s}"
    return f"{value:{width}.4f}"


def _print_model_table(rows: dict, evaluator) -> None:
    """One row per model directory, one column per (task, metric)."""
    from wsviz.eval.metrics import metric_specs

    first = next(iter(rows.values()))
    specs = metric_specs(evaluator, first)
    cols = [(t, m) for t, ms_ in first.items() for m in specs if m in ms_]
    heads = [f"{t} {m} {specs[m].arrow}".strip() for t, m in cols]
    _legend(specs, [m for _, m in cols])
    w = _width(rows)
    cw = max([14, *(len(h) + 2 for h in heads)])
    print(f"{'model':{w}s}" + "".join(f"{h:>{cw}s}" for h in heads))
    for name, res in rows.items():
        print(f"{name:{w}s}" + "".join(_cell(specs[m], res.get(t, {}).get(m, float("nan")),
                                              cw) for t, m in cols))


def _legend(specs, metrics) -> None:
    """``# perplexity: lower is better · loss: ...`` (counts are not metrics: left out)."""
    shown = [m for m in dict.fromkeys(metrics) if not specs[m].is_count]
    if shown:
        print("# " + " · ".join(
            f"{m}: {'higher' if specs[m].higher_is_better else 'lower'} is better"
            + (f" ({specs[m].unit})" if specs[m].unit else "") for m in shown))


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
    from wsviz.eval import evaluate_recipe, sweep
    from wsviz.eval.metrics import declare_metric
    from wsviz.recipes import InMemoryMerger, Recipe
    from wsviz.session.open import load_evaluator

    opts = eval_options(args)
    models = _model_targets(args.recipe)
    if models:
        return _evaluate_models(models, args, opts)
    args.recipe = args.recipe[0] if args.recipe else None
    if args.demo:
        from wsviz.zoo import ensure_zoo
        from wsviz.zoo.table import zoo_recipe

        zoo = ensure_zoo()
        ms = zoo.modelset()
        recipe = Recipe.load(args.recipe) if args.recipe else zoo_recipe(
            zoo.tasks, "task_arithmetic")
        evaluator = (zoo.evaluator(device=args.device) if args.eval in (None, "zoo")
                     else load_evaluator(args.eval, ms, device=args.device, **opts))
    else:
        from wsviz.commands._recipe_args import recipe_and_models
        from wsviz.io import ModelSet

        recipe, base, labels = recipe_and_models(args.recipe, args.eval, SPECS)
        ms = ModelSet.open(base, labels, labels=labels)
        evaluator = load_evaluator(args.eval, ms, device=args.device, **opts)
    if args.metric:
        declare_metric(evaluator, args.metric)
    recipe.validate()
    names = getattr(evaluator, "names", None)
    merger = InMemoryMerger(ms, device=args.device, names=names)
    if not args.sweep:
        bar = _bar(evaluator, args, "evaluate")
        try:
            res = evaluate_recipe(recipe, evaluator, merger, on_partial=bar)
        finally:
            if bar is not None:
                bar.close()
        _describe(evaluator)
        _print_results(res, evaluator)
        if args.references:
            _print_references(res, evaluator, ms, names, args.device)
        return 0
    grid = {}
    for s in args.sweep:
        if "=" not in s:
            raise WsvizError(f"--sweep {s!r}: write PARAM=VALUES")
        k, v = s.split("=", 1)
        grid[k.strip()] = parse_values(v)
    df = sweep(recipe, grid, evaluator, merger, progress=True)
    _print_sweep(df, grid, evaluator, args.metric)
    return 0


def _width(names) -> int:
    return max([12, *(len(str(n)) + 2 for n in names)])


def _print_results(res, evaluator) -> None:
    """One row per task (then the mean), one column per metric with its direction arrow."""
    from wsviz.eval import mean_metrics
    from wsviz.eval.metrics import metric_specs

    specs = metric_specs(evaluator, res)
    metrics = [m for m in specs if any(m in ms_ for ms_ in res.values())]
    _legend(specs, metrics)
    w = _width(res)
    cols = [f"{m} {specs[m].arrow}".strip() for m in metrics]
    cw = max([14, *(len(c) + 2 for c in cols)])
    print(f"{'task':{w}s}" + "".join(f"{c:>{cw}s}" for c in cols))
    for t, ms_ in res.items():
        print(f"{t:{w}s}" + "".join(_cell(specs[m], ms_.get(m, float("nan")), cw)
                                    for m in metrics))
    mm = mean_metrics(res)
    print(f"{'mean':{w}s}" + "".join(_cell(specs[m], mm.get(m, float("nan")), cw)
                                     for m in metrics))


def _print_references(res, evaluator, ms, names, device) -> None:
    """The primary metric of the merge beside the pre-trained base, the individual fine-tunes
    (matched to tasks by name) and, when tasks have no own fine-tune, every fine-tune."""
    import math
    from pathlib import Path

    from wsviz.eval.metrics import primary_metric
    from wsviz.eval.references import metric_of, reference_results, reference_rows

    spec = primary_metric(evaluator, res)
    per_model = reference_results(evaluator, ms, names=names, device=device)
    refs = {k: v for k, v in reference_rows(per_model, spec.name, list(res)).items() if v}
    short = {k: "ft:" + Path(k[3:]).name for k in refs if k.startswith("ft:")}
    if len(set(short.values())) == len(short):  # recipe labels are paths: show their names
        refs = {short.get(k, k): v for k, v in refs.items()}
    rows = {"merged": metric_of(res, spec.name), **refs}
    print(f"\n{spec.label}: merge vs references")
    w = _width(res)
    cw = max([14, *(len(k) + 2 for k in rows)])
    print(f"{'task':{w}s}" + "".join(f"{k:>{cw}s}" for k in rows))
    for t in res:
        print(f"{t:{w}s}" + "".join(f"{r.get(t, math.nan):{cw}.4f}" for r in rows.values()))
    means = {k: (math.fsum(r.values()) / len(r) if r else math.nan) for k, r in rows.items()}
    print(f"{'mean':{w}s}" + "".join(f"{v:{cw}.4f}" for v in means.values()))


def _print_sweep(df, grid, evaluator, metric_arg) -> None:
    """The sweep table of the chosen metric (tasks as columns, ``mean`` included) and the best
    grid point by the mean, in the metric's own direction."""
    from wsviz.eval.metrics import metric_specs, parse_metric

    name = parse_metric(metric_arg)[0] if metric_arg else df["metric"].iloc[0]
    if name not in set(df["metric"]):
        raise WsvizError(f"--metric {name!r}: the evaluator reports {sorted(set(df.metric))}")
    spec = metric_specs(evaluator, {"": dict.fromkeys(set(df["metric"]), 0.0)})[name]
    table = df[df.metric == name].pivot_table(index=list(grid), columns="task", values="value",
                                              sort=False)
    print(f"{spec.label}:")
    print(table.to_string(float_format=lambda x: f"{x:.4f}"))
    if "mean" in table.columns:
        col = table["mean"]
        key = col.idxmax() if spec.higher_is_better else col.idxmin()
        at = ", ".join(f"{k}={v}" for k, v in zip(grid, key if isinstance(key, tuple)
                                                     else (key,)))
        print(f"best mean {name}: {spec.format(float(col[key]))} at {at}")
