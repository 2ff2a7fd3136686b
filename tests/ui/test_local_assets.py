"""Every stylesheet of a served page points at the server, not at cdn.holoviz.org.

Panel writes component stylesheets (``loading.css``, ``markdown.css``, notifications) as CDN
URLs and rewrites them only once the document knows its ``dist_url``; a model built before
that kept the CDN URL and the browser fetched it when the model appeared (issue 19 item 5).
This builds the page in a server-like document, renders every tab and each pane state
(spinners on, Markdown objects, notifications) and inspects the stylesheet URLs the browser
would be sent. The browser test ``test_offline_browser.py`` checks the requests themselves.
"""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import panel as pn
from bokeh.document import Document
from bokeh.models import ImportedStyleSheet
from panel.io.state import set_curdoc

from tests.ui.fake_workspace import FakeWorkspace
from wsviz.ui import app as app_mod


class _Context:
    """Stands in for the Bokeh server's session context (a request with no arguments)."""

    id = "test-session"
    server_context = None
    request = SimpleNamespace(arguments={}, headers={}, cookies={}, uri="/", path="/",
                              protocol="http", host="127.0.0.1")


def _served_doc() -> tuple[Document, _Context]:
    doc = Document()
    ctx = _Context()
    doc._session_context = weakref.ref(ctx)
    return doc, ctx


def _urls(doc: Document) -> list[str]:
    return sorted({str(m.url) for m in doc.models if isinstance(m, ImportedStyleSheet)})


def _build_and_walk(doc: Document):
    app_mod.extension()
    with set_curdoc(doc):
        template = app_mod.build_page(FakeWorkspace(), background=False)
        template.server_doc(doc)
        tabs = template.main[0]
        for i in range(len(tabs)):  # dynamic tabs: each tab's models appear when opened
            tabs.active = i
        c = template.wsviz
        c.session.busy = 1  # the header spinner on
        c.session.status = "working"
        c.detail._spinner.value = True
        c.export.write(outdir="")  # an error notification
        c.session.notify_info("done")
    return template


def test_served_page_references_only_local_stylesheets():
    doc, _ctx = _served_doc()
    _build_and_walk(doc)
    urls = _urls(doc)
    assert any("markdown.css" in u for u in urls) and any("loading.css" in u for u in urls)
    assert [u for u in urls if "://" in u or u.startswith("//")] == []


def test_without_the_fix_the_page_would_reference_the_cdn(monkeypatch):
    """The check above is not vacuous: without :func:`serve_assets_locally` the same page
    references cdn.holoviz.org (as the dashboard did before the fix)."""
    monkeypatch.setattr(app_mod, "serve_assets_locally", lambda doc=None: None)
    doc, _ctx = _served_doc()
    _build_and_walk(doc)
    assert any(u.startswith("https://cdn.holoviz.org/") for u in _urls(doc))


def test_outside_a_server_session_panel_decides():
    doc = Document()  # a notebook / standalone document: no session context
    app_mod.serve_assets_locally(doc)
    assert "dist_url" not in doc._template_variables
    assert pn.state.curdoc is None or pn.state.curdoc is not doc
