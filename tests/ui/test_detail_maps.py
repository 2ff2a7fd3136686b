"""Detail maps on the tensor's own axes: a pooled sign-conflict map or a strided matrix spans
the tensor's real rows x columns, never shares (links) its axes with another map, and its
hover names the real row / column range of a cell."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pytest
from bokeh.models import CustomJSHover, HoverTool

import wsviz.ui  # noqa: F401 - loads the bokeh plotting backend
from wsviz.analysis.maps import cell_range, view_shape
from wsviz.compute.conflicts import pooled_map
from wsviz.ui.layer_detail import matrix_plot


def test_view_shape():
    assert view_shape((4096, 1024)) == (4096, 1024)
    assert view_shape((64, 3, 3, 3)) == (64, 27)
    assert view_shape((768,)) == (1, 768)


def test_cell_range_matches_torch_pooling():
    import torch

    # 10 rows pooled to 4 cells: each cell's mean equals the mean of the rows cell_range names
    x = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 3)
    pooled = pooled_map(x, max_size=4)
    assert pooled.shape == (4, 3)
    for i in range(4):
        a, b = cell_range(i, 10, 4, "pooled")
        assert pooled[i, 0].item() == pytest.approx(x[a:b + 1, 0].mean().item())
    assert [cell_range(i, 10, 4) for i in range(4)] == [(0, 2), (2, 4), (5, 7), (7, 9)]
    # strided (the matrix views: every s-th row, s = ceil(n / m))
    assert cell_range(3, 4096, 2048, "strided") == (6, 7)
    assert cell_range(2, 5, 3, "strided") == (4, 4)
    with pytest.raises(ValueError):
        cell_range(4, 10, 4)


def _opts(el, kind):
    return hv.Store.lookup_options("bokeh", el, kind).kwargs


def test_pooled_conflict_map_spans_the_tensor():
    cmap = np.random.default_rng(0).random((256, 128))
    img = matrix_plot(cmap, "Sign-conflict map", symmetric=False, shape=(4096, 128),
                      mode="pooled", key="conflict")
    assert img.bounds.lbrt() == (0, 0, 128, 4096)
    plot = _opts(img, "plot")
    assert plot["shared_axes"] is False and plot["invert_yaxis"] is True
    assert plot["ylim"] == (0, 4096) and plot["xlim"] == (0, 128)
    assert "pooled to 256×128" in plot["title"] and "[4096×128]" in plot["title"]
    assert [d.label for d in img.kdims] == ["column", "row"]
    hover = [t for t in plot["tools"] if isinstance(t, HoverTool)][0]
    fmt = hover.formatters["$y"]
    assert isinstance(fmt, CustomJSHover)
    assert fmt.args == {"n": 4096, "m": 256, "mode": "pooled"}
    # array row 0 is drawn at y in [0, 16) (top, with the inverted axis)
    assert img[64, 8] == pytest.approx(cmap[0, 64])
    assert img[64, 4095] == pytest.approx(cmap[255, 64])
    # its axes are not the matrix view's (no linking between the detail tabs)
    mat = matrix_plot(np.ones((32, 128)), "delta", shape=(4096, 128), key="matrix")
    assert {d.name for d in mat.kdims}.isdisjoint({d.name for d in img.kdims})
    assert mat.bounds.lbrt() == (0, 0, 128, 4096)


def test_unpooled_map_keeps_plain_title_and_1d_is_one_row():
    img = matrix_plot(np.ones((8, 8)), "m", shape=(8, 8))
    assert "cell" not in _opts(img, "plot")["title"]
    one = matrix_plot(np.ones((1, 100)), "bias map", shape=(400,), mode="pooled", key="c")
    assert one.bounds.lbrt() == (0, 0, 400, 1)
