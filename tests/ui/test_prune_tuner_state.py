"""Prune tuner (issue 19): it defaults to the current merge, and a failed evaluation withdraws
the previous result instead of leaving it on the page as if it were current; the toast text is
clipped and wraps (no overflow), the full message is kept."""

from __future__ import annotations

import pytest

import wsviz.ui  # noqa: F401 - loads the bokeh plotting backend
from tests.ui.fake_workspace import TASKS, FakeWorkspace
from wsviz.errors import EvalError
from wsviz.session.views import MERGE_TARGET
from wsviz.ui.app import build_components
from wsviz.ui.session import clip_message

LONG = ("NotImplementedError: Cannot copy out of meta tensor; no data! Please use "
        "torch.nn.Module.to_empty() instead of torch.nn.Module.to() when moving module from "
        "meta to a different device.\n" + "/a/very/long/path/to/the_model_directory/" * 8)


def test_defaults_to_the_current_merge_and_withdraws_a_failed_result():
    c = build_components(FakeWorkspace())
    p, s = c.prune, c.session
    assert p.target == MERGE_TARGET  # not a fine-tune
    assert p.metrics == dict.fromkeys(TASKS, pytest.approx(0.9 - 0.5 * 0.6))
    assert "on `current merge`" in p._summary.object
    ws = s.workspace

    def fail(*a, **k):
        raise EvalError(LONG)

    ws.evaluate_prune, ok = fail, ws.evaluate_prune
    p.set("sparsity", 0.7)
    assert p.metrics is None
    assert "no result" in p._summary.object and "eval #" not in p._summary.object
    assert p._live._last[0] == {} and "failed" in p._live._last[1]
    assert s.last_error == LONG  # the whole message is kept (log, errors list)
    # an invalid setting (refused before evaluating) withdraws the result too
    ws.evaluate_prune = ok
    p.set("sparsity", 0.3)
    assert p.metrics is not None
    p.set("sparsity", 2.0)
    assert p.metrics is None and "sparsity=2.0" in s.last_error
    assert "no result" in p._summary.object


def test_prune_tuner_without_a_merge_defaults_to_a_fine_tune():
    from wsviz.ui.prune_tuner import PruneTuner
    from wsviz.ui.session import Session

    s = Session(FakeWorkspace(), background=False)
    assert s.merge_recipe is None
    assert PruneTuner(s).target == FakeWorkspace().labels[0]


def test_clip_message_cuts_and_breaks_long_words():
    text = clip_message(LONG)
    assert "\n" not in text and len(text.replace("\u200b", "")) <= 280 and text.endswith("…")
    assert text.startswith("NotImplementedError: Cannot copy out of meta tensor")
    assert max(len(w) for w in text.replace("\u200b", " ").split()) <= 48
    assert clip_message("short one") == "short one"
