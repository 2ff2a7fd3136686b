"""Round slider grids and typed-value checks (wsviz.session.param_grid), and the merge tuner's
exact parameter entry on the demo zoo: typed / slid values reach the exported YAML exactly."""

from __future__ import annotations

import math
import re

import param
import pytest
import yaml

import wsviz.ui  # noqa: F401 - loads the bokeh plotting backend
from wsviz.errors import RecipeError
from wsviz.session.param_grid import check_value, nice_step, slider_grid, tidy


def test_nice_step_is_1_2_5_times_a_power_of_ten():
    assert nice_step(1.0) == 0.01
    assert nice_step(0.99) == 0.01
    assert nice_step(2.0) == 0.02
    assert nice_step(3.0) == 0.05
    assert nice_step(0.2) == 0.002
    assert nice_step(0.5) == 0.005
    assert nice_step(100) == 1.0
    assert nice_step(0) == 0.01 and nice_step(math.inf) == 0.01


def test_slider_grid_every_position_is_round():
    g = slider_grid(-1.0, 2.0, 1.0)  # weight: the old grid (step 0.03) missed 0.3
    assert (g.start, g.end, g.step, g.value) == (-1.0, 2.0, 0.05, 1.0)
    positions = [tidy(g.start + k * g.step, g.step)
                 for k in range(round((g.end - g.start) / g.step) + 1)]
    assert 0.3 in positions and all(p == round(p, 2) for p in positions)
    d = slider_grid(0.0, 1.0, 0.2, open_low=True)  # density in (0, 1]
    assert (d.start, d.end, d.step) == (0.01, 1.0, 0.01)
    dens = [tidy(d.start + k * d.step, d.step) for k in range(100)]
    assert 0.4 in dens and 0.3961 not in dens
    # a value beyond the range widens it to the enclosing multiples of the step
    w = slider_grid(0.0, 2.0, 3.3)
    assert w.end == 3.3 and w.value == 3.3
    assert slider_grid(0.0, 2.0, -0.5).start == -0.5
    i = slider_grid(0, 100, 7, integer=True)
    assert i.step == 1.0 and i.value == 7


def test_tidy_removes_binary_noise_only():
    assert tidy(0.1 + 0.2) == 0.3
    assert tidy(-1 + 26 * 0.05, 0.05) == 0.3
    assert tidy(0.3961) == 0.3961 and tidy(1 / 3) == pytest.approx(1 / 3, rel=1e-9)


def test_check_value_messages_name_parameter_and_range():
    assert check_value("density", 0.4, (0.0, 1.0), open_low=True) == 0.4
    assert check_value("weight", "0.30000000000000004") == 0.3
    with pytest.raises(RecipeError, match=r"density = 1.5 is outside \(0, 1\]; type a value"):
        check_value("density", 1.5, (0.0, 1.0), open_low=True)
    with pytest.raises(RecipeError, match=r"density = 0 is outside \(0, 1\]"):
        check_value("density", 0.0, (0.0, 1.0), open_low=True)
    with pytest.raises(RecipeError, match="epsilon = 1 is outside"):
        check_value("epsilon", 1.0, (0.0, 1.0), open_high=True)
    with pytest.raises(RecipeError, match="not a number"):
        check_value("lambda", "abc")
    with pytest.raises(RecipeError, match="not a finite number"):
        check_value("lambda", math.nan)
    with pytest.raises(RecipeError, match="whole number"):
        check_value("seed", 1.5, integer=True)


# -- the merge tuner on the demo zoo ---------------------------------------------------------


@pytest.fixture
def comps(demo_ws):
    from wsviz.ui.app import build_components

    return build_components(demo_ws, analyse=False)


def release(entry, value) -> None:
    """Drag the entry's slider to ``value`` and release it, as the browser reports it."""
    entry.slider.value = value
    with param.edit_constant(entry.slider):
        entry.slider.value_throttled = value


def test_ties_entries_exist_per_model_with_round_grids(comps):
    m = comps.merge
    m.method = "ties"
    labels = comps.session.workspace.labels
    for lab in labels:  # every per-model parameter TIES declares
        assert {"weight", "density"} <= set(m._model_widgets[lab])
    dens = m.entry("density")
    assert (dens.slider.start, dens.slider.step) == (0.01, 0.01)
    assert m.entry("weight", labels[0]).slider.step == 0.05
    assert "fraction of the task vector kept" in dens.tooltip.value
    assert "(0, 1]" in dens.tooltip.value
    m.method = "breadcrumbs"
    assert "gamma" in m._model_widgets[labels[0]] and "gamma" in m._widgets


def test_exported_yaml_has_exactly_the_values_set_in_the_ui(comps):
    m, ex = comps.merge, comps.export
    labels = comps.session.workspace.labels
    m.method = "ties"
    m.entry("density").type_value(0.4)  # typed
    release(m.entry("weight", labels[0]), -1 + 26 * 0.05)  # slid: 0.30000000000000004 in JS
    assert m.entry("weight", labels[0]).input.value == 0.3  # the box follows the slider
    cfg = yaml.safe_load(ex.yaml_text)
    assert cfg["parameters"]["density"] == 0.4
    assert cfg["models"][0]["parameters"]["weight"] == 0.3
    # the text itself holds the round numbers (no 0.3961 / 0.30000000000000004)
    assert re.search(r"density: 0\.4[,}\n]", ex.yaml_text)
    assert re.search(r"weight: 0\.3[,}\n]", ex.yaml_text)
    # slid density lands on the round grid too
    release(m.entry("density"), 0.01 + 29 * 0.01)
    assert yaml.safe_load(ex.yaml_text)["parameters"]["density"] == 0.3
    assert m.entry("density").input.value == 0.3


def test_typed_values_round_trip_and_are_validated(comps):
    m, s = comps.merge, comps.session
    labels = s.workspace.labels
    m.method = "ties"
    w = m.entry("weight", labels[1])
    w.type_value(0.37)  # off the slider grid: kept exactly
    assert w.value == 0.37 and w.slider.value == 0.37
    w.type_value(3.5)  # beyond the slider's range but valid: the slider widens
    assert w.value == 3.5 and w.slider.end >= 3.5
    assert m.recipe.models[1].params["weight"] == 3.5
    state = m.state
    m.entry("weight", labels[1]).type_value(1.0)
    m.restore(state)
    assert m.entry("weight", labels[1]).value == 3.5
    assert m.entry("weight", labels[1]).input.value == 3.5
    n_err = len(s.errors)
    d = m.entry("density")
    d.type_value(1.5)
    assert "density = 1.5 is outside (0, 1]" in d.error and d.value == 0.2
    assert d.input.value == 0.2 and len(s.errors) == n_err + 1
    assert "density = 1.5" in s.errors[-1]
    assert m.recipe.params["density"] == 0.2  # the refused value never reached the recipe
    d.type_value(0.5)
    assert d.error == "" and m.recipe.params["density"] == 0.5


def test_per_model_density_reaches_the_recipe_and_yaml(comps):
    m, ex = comps.merge, comps.export
    labels = comps.session.workspace.labels
    m.method = "ties"
    m.entry("density").type_value(0.4)
    over = m.entry("density", labels[2])
    assert over.value is None and over.slider.value == 0.4  # shows the global value
    over.type_value(0.7)
    assert m.recipe.models[2].params["density"] == 0.7
    assert "density" not in m.recipe.models[0].params
    cfg = yaml.safe_load(ex.yaml_text)
    assert cfg["models"][2]["parameters"]["density"] == 0.7
    assert cfg["parameters"]["density"] == 0.4
    # the tuner state of a recipe with per-model densities restores them (search rows)
    from wsviz.session.tuner import tuner_state

    st = tuner_state(m.recipe, m.methods, labels)
    assert st["model_params"][labels[2]]["density"] == 0.7
    over.type_value(None)  # an empty box: back to the global value
    assert "density" not in m.recipe.models[2].params
    m.restore(st)
    assert m.entry("density", labels[2]).value == 0.7
    assert m.recipe.models[2].params["density"] == 0.7
