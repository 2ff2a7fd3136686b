"""Compose the components into one page (server) or return them for a notebook.

The served page requests nothing outside its own server: Panel/Bokeh serve their scripts
and stylesheets locally (server mode), and the template uses :class:`Fast`, Panel's Fast design
without its Google-Fonts stylesheet, with a system font stack instead."""

from __future__ import annotations

from dataclasses import dataclass

import panel as pn
from panel.theme.fast import Fast as _PanelFast

from wsviz.session.base import Workspace
from wsviz.ui.export import Export
from wsviz.ui.layer_detail import LayerDetail
from wsviz.ui.merge_tuner import MergeTuner
from wsviz.ui.overview import Overview
from wsviz.ui.prune_tuner import PruneTuner
from wsviz.ui.search_panel import SearchPanel
from wsviz.ui.session import Session
from wsviz.ui.task_map import TaskMap
from wsviz.ui.text import SafeMarkdown, html_text

EXTENSIONS = ("tabulator", "codeeditor")
#: fonts every OS has (the Fast design would fetch Open Sans from fonts.googleapis.com)
SYSTEM_FONT = ("system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, "
               "'Noto Sans', 'Liberation Sans', sans-serif")




class Fast(_PanelFast):
    """Panel's Fast design minus its web-font stylesheet (fonts.googleapis.com). The class
    keeps the name ``Fast``: Panel derives the local paths of a design's scripts from it."""

    _resources = {k: v for k, v in _PanelFast._resources.items() if k != "font"}


def serve_assets_locally(doc=None) -> None:
    """Make Panel resolve every stylesheet of the served document ``doc`` (default: the
    current one) on this server, from its first model on.

    Panel writes component stylesheets (``loading.css``, ``markdown.css``, ...) as
    ``cdn.holoviz.org`` URLs and rewrites them to the server only once the document knows its
    ``dist_url``, which Panel sets when it renders the page: models made before that (the
    page being built, callbacks racing the first render) or later cached keep the CDN URL,
    and the browser fetched it when they appeared (e.g. after "Write merged weights"). Setting
    ``dist_url`` here, before any model exists, closes that window. No-op outside a server
    session or when Bokeh resources are not served locally (``BOKEH_RESOURCES=cdn``)."""
    from bokeh.settings import settings
    from panel.io.resources import LOCAL_DIST
    from panel.io.state import state

    doc = doc if doc is not None else pn.state.curdoc
    if doc is None or doc.session_context is None or state._is_pyodide:
        return
    if settings.resources(default="server") != "server":
        return
    local = f"{state.rel_path}/{LOCAL_DIST}" if state.rel_path else LOCAL_DIST
    doc._template_variables.setdefault("dist_url", local)


def _keep_stylesheets_local() -> None:
    """Where Panel falls back to its CDN for a stylesheet (a model built or updated without a
    document, e.g. a plot's child model), use the current served document's local
    ``dist_url`` instead (set by :func:`serve_assets_locally`); elsewhere Panel decides."""
    import panel.reactive
    import panel.theme.base
    from panel.io import resources

    original = resources.patch_stylesheet
    if getattr(original, "wsviz_local", False):
        return

    def patch_stylesheet(stylesheet, dist_url):
        if dist_url == resources.CDN_DIST:
            doc = pn.state.curdoc
            local = doc._template_variables.get("dist_url") if doc is not None else None
            if local and local != resources.CDN_DIST:
                dist_url = local
        return original(stylesheet, dist_url)

    patch_stylesheet.wsviz_local = True
    for module in (resources, panel.reactive, panel.theme.base):
        module.patch_stylesheet = patch_stylesheet


def escape_template_text(template) -> None:
    """Make a Panel template show its title (and site name) as text: the browser tab title
    is escaped by Bokeh, but the header and ``<meta>`` take ``app_title`` / ``meta_name``
    raw, so a model directory named ``<img onerror=...>`` ran script there."""
    update = template._update_vars

    def escaped(*args) -> None:
        update(*args)
        for key in ("app_title", "meta_name", "site_title"):
            value = template._render_variables.get(key)
            if isinstance(value, str):
                template._render_variables[key] = html_text(value)

    template._update_vars = escaped  # Panel calls it again when it renders the page
    escaped()


def extension(**kwargs) -> None:
    """Load Panel/HoloViews extensions wsviz needs (call once, in a notebook or app)."""
    import holoviews as hv

    hv.extension("bokeh", logo=False)
    pn.extension(*EXTENSIONS, notifications=True, **kwargs)
    _keep_stylesheets_local()


@dataclass
class Components:
    """All views of one session, sharing ``session``."""

    session: Session
    overview: Overview
    detail: LayerDetail
    task_map: TaskMap
    merge: MergeTuner
    prune: PruneTuner
    export: Export
    search: SearchPanel


def build_components(workspace: Workspace, background: bool = False,
                     analyse: bool = True) -> Components:
    """Create a fresh :class:`Session` and every component on it (call once per session)."""
    session = Session(workspace, background=background)
    overview = Overview(session)
    detail = LayerDetail(session)
    merge = MergeTuner(session)
    # the merge tuner's recipe is session state: the prune tuner prunes the current merge
    merge.param.watch(lambda e: setattr(session, "merge_recipe", e.new), "recipe")
    session.merge_recipe = merge.recipe
    comps = Components(session, overview, detail, TaskMap(session, autostart=not background),
                       merge,
                       PruneTuner(session), Export(session, merge), SearchPanel(session, merge))
    if analyse:
        session.load_analysis()
    return comps


def build_page(workspace: Workspace, background: bool = True):
    """The full dashboard in a template (one per browser session)."""
    serve_assets_locally()
    c = build_components(workspace, background=background)
    s = c.session
    spinner = pn.indicators.LoadingSpinner(value=False, size=28, color="light",
                                           css_classes=["wsviz-busy"])
    status = SafeMarkdown("", styles={"color": "white"}, margin=(0, 10),
                              css_classes=["wsviz-header-status"])

    def on_busy(*_):
        spinner.value = s.busy > 0

    def on_status(*_):
        status.object = s.status

    s.param.watch(on_busy, "busy")
    s.param.watch(on_status, "status")
    on_busy()
    on_status()
    tabs = pn.Tabs(
        ("Explore", pn.Row(pn.Column(c.overview, width=c.overview.preferred_width), c.detail,
                           sizing_mode="stretch_width")),
        ("Task map", c.task_map),
        ("Merge", c.merge),
        ("Search", c.search),
        ("Prune", c.prune),
        ("Export", c.export),
        dynamic=True, sizing_mode="stretch_width",
    )

    def on_tab(event):
        if tabs._names[event.new] == "Task map":
            c.task_map.start()  # PCA / UMAP only when first looked at

    tabs.param.watch(on_tab, "active")
    template = pn.template.FastListTemplate(
        title=f"wsviz — {workspace.title}",
        header=[pn.Row(spinner, status)],
        main=[tabs],
        accent="#4c78a8",
        theme_toggle=False,
        design=Fast,
        font=SYSTEM_FONT,
        font_url="",
    )
    escape_template_text(template)
    template.wsviz = c  # handy for debugging from the server console
    return template
