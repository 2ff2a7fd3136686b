"""Open a session: a workspace over checkpoint paths (:func:`open_workspace`) or the demo
zoo (:func:`demo_workspace`), and the evaluator of an ``--eval`` spec
(:func:`load_evaluator`)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from wsviz.errors import WsvizError
from wsviz.session.workspace import ApiWorkspace


def demo_workspace(device=None, metric=None) -> ApiWorkspace:
    """The demo zoo (base + task fine-tunes) with its per-task evaluator (``metric``:
    ``accuracy`` by default; ``loss`` / ``normalized_accuracy`` also reported)."""
    from wsviz.zoo import ensure_zoo
    from wsviz.zoo.calibration import zoo_input_norms

    zoo = ensure_zoo()
    ms = zoo.modelset()
    ev = zoo.evaluator()
    return ApiWorkspace(ms, ev, title="demo zoo (digits Llama)", device=device,
                        metric=metric, input_norms=partial(zoo_input_norms, zoo))


def load_evaluator(spec: str | None, modelset=None, device=None, **options):
    """An evaluator from ``--eval`` (see :func:`wsviz.eval.factory.make_evaluator`, which
    takes ``options``: tokenizer, lm_eval_include, lm_eval_limit, metric): ``zoo``,
    ``ppl:TEXT``, ``mc:FILE.jsonl``, ``lm-eval:TASKS`` or ``module:function``. None -> None."""
    if not spec:
        return None
    import wsviz.zoo  # noqa: F401 - registers the built-in "zoo" evaluator
    from wsviz.eval.factory import make_evaluator

    return make_evaluator(spec, modelset=modelset, device=device, **options)


def open_workspace(base, models, eval_spec: str | None = None, device=None,
                   labels=None, metric=None, calib: str | None = None,
                   **eval_options) -> ApiWorkspace:
    """A workspace over checkpoint paths ``base`` and ``models``; ``eval_spec`` and
    ``eval_options`` (tokenizer, lm_eval_include, lm_eval_limit) as for
    :func:`load_evaluator`; ``metric``: ``"NAME"`` or ``"NAME:min|max"`` to plot;
    ``calib``: Wanda calibration file (``.pt`` token ids or ``.txt``) for transformers
    models, as ``wsviz prune --calib`` takes it (enables the tuner's wanda method)."""
    from wsviz.io import ModelSet

    ms = ModelSet.open(str(base), [str(m) for m in models], labels=labels)
    evaluator = load_evaluator(eval_spec, ms, device=device, metric=metric, **eval_options)
    norms = None
    if calib is not None:
        if not Path(calib).is_file():
            raise WsvizError(f"--calib {calib}: no such file")
        from wsviz.recipes.calibration import hf_input_norms

        paths = {"base": str(base), **dict(zip(ms.labels, map(str, models)))}
        norms = partial(hf_input_norms, paths, str(calib), device,
                        tokenizer=eval_options.get("tokenizer"))
    ws = ApiWorkspace(ms, evaluator, title=f"{Path(str(base)).name} + {len(ms.labels)}",
                      device=device, metric=metric, input_norms=norms)
    ws.calib = str(calib) if calib is not None else None
    return ws
