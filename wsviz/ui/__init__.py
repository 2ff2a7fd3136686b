"""Panel dashboards for wsviz: the layer explorer, merge / prune tuners with live evaluation,
and export. Every component is a ``pn.viewable.Viewer`` that works the same in ``panel
serve`` and in a notebook; none does tensor math (they call wsviz's API through a
:class:`~wsviz.session.Workspace`).

Notebook use::

    import wsviz.ui as wui
    wui.extension()
    ws = wui.demo_workspace()          # or wui.open_workspace(base, [ft1, ft2])
    c = wui.build_components(ws)
    c.overview                          # display any component
"""

from __future__ import annotations

import holoviews.plotting.bokeh  # noqa: F401 - registers the bokeh backend for .opts()

from wsviz.session.base import Workspace
from wsviz.session.views import LayerDetailView, MethodView, ParamView
from wsviz.ui.app import Components, build_components, build_page, extension
from wsviz.ui.export import Export
from wsviz.ui.layer_detail import LayerDetail
from wsviz.ui.merge_tuner import MergeTuner
from wsviz.ui.overview import Overview
from wsviz.ui.prune_tuner import PruneTuner
from wsviz.ui.session import Session
from wsviz.ui.task_map import TaskMap
from wsviz.ui.why_panel import WhyPanel
from wsviz.ui.widgets import ParamEntry

__all__ = [
    "Components", "Export", "LayerDetail", "LayerDetailView", "MergeTuner", "MethodView",
    "Overview", "ParamEntry", "ParamView", "PruneTuner", "Session", "TaskMap", "WhyPanel",
    "Workspace",
    "build_components", "build_page", "extension", "demo_workspace", "open_workspace",
]


def demo_workspace(**kwargs) -> Workspace:
    """The built-in demo zoo as a workspace (built and cached on first use)."""
    from wsviz.session.open import demo_workspace as _demo

    return _demo(**kwargs)


def open_workspace(base, models, **kwargs) -> Workspace:
    """A workspace over ``base`` and fine-tuned ``models`` (paths); see ApiWorkspace."""
    from wsviz.session.open import open_workspace as _open

    return _open(base, models, **kwargs)
