"""Helpers for driving the served dashboard with playwright (Bokeh renders into shadow DOM)."""

from __future__ import annotations

import time

import pytest


def browser_marks(timeout: float = 300) -> list:
    """``pytestmark`` of a browser test module: ``browser``, ``slow`` and a per-test timeout."""
    return [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(timeout)]


def poll(page, probe, done=bool, timeout: float = 60.0, interval_ms: int = 200,
         what: str = "the page"):
    """Call ``probe()`` every ``interval_ms`` until ``done(value)``; returns that value, or
    raises AssertionError naming ``what`` and the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = probe()
        if done(last):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} never matched; last: {last!r}")
        page.wait_for_timeout(interval_ms)


def figures_js(visit: str, params: str = "") -> str:
    """A page function ``(params) => out`` that runs the JS statements ``visit`` for every
    rendered Bokeh view ``v`` (its model ``m``), each view once, pushing results to ``out``."""
    return f"""
({params}) => {{
  const out = [];
  const seen = new Set();
  function walk(v) {{
    if (!v || seen.has(v)) return;
    seen.add(v);
    const m = v.model;
    {visit}
    for (const k of (v.child_views || [])) walk(k);
  }}
  for (const v of Object.values(Bokeh.index)) walk(v);
  return out;
}}
"""


# Text of a Panel pane found by its css class (its content lives in the host's shadow root).
PANE_TEXT_JS = """
(cls) => {
  const hosts = Array.from(document.querySelectorAll('*')).filter(e => false);
  function find(root) {
    const out = [];
    const walker = (node) => {
      if (node.classList && node.classList.contains(cls)) out.push(node);
      if (node.shadowRoot) Array.from(node.shadowRoot.children).forEach(walker);
      Array.from(node.children || []).forEach(walker);
    };
    walker(root);
    return out;
  }
  const els = find(document.body);
  return els.map(e => {
    const root = e.shadowRoot || e;
    return Array.from(root.children).filter(c => !['STYLE', 'LINK'].includes(c.tagName))
      .map(c => c.innerText || c.textContent || '').join(' ');
  });
}
"""

# Bounding boxes (viewport px) of the frames of every rendered Bokeh figure, by title.
PLOT_BOXES_JS = figures_js("""
    if (m && m.title !== undefined && v.frame && v.el) {
      const r = v.el.getBoundingClientRect();
      const b = v.frame.bbox;
      if (r.width > 0) out.push({title: m.title ? m.title.text : '', x: r.left + b.x0,
                                 y: r.top + b.y0, w: b.width, h: b.height});
    }""")


def pane_text(page, cls: str) -> str:
    """Visible text of the first Panel pane with css class ``cls`` ("" if none)."""
    texts = page.evaluate(PANE_TEXT_JS, cls)
    return texts[0] if texts else ""


def wait_pane_text(page, cls: str, predicate, timeout: float = 60.0) -> str:
    """Poll until ``predicate(text)`` holds for the pane ``cls``; returns the text."""
    return poll(page, lambda: pane_text(page, cls), predicate, timeout, 100, f"pane .{cls}")


def plot_box(page, title_prefix: str, timeout: float = 60.0) -> dict:
    """Frame box ``{x, y, w, h}`` of the visible figure whose title starts with the prefix."""
    return poll(page, lambda: next((b for b in page.evaluate(PLOT_BOXES_JS)
                                    if b["title"].startswith(title_prefix) and b["w"] > 0), None),
                lambda b: b is not None, timeout, what=f"a plot titled {title_prefix!r}")


def open_app(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(".bk-tab", timeout=60_000)


def open_tab(page, name: str) -> None:
    page.locator(".bk-tab").get_by_text(name, exact=True).click()
    page.wait_for_timeout(300)


def notifications(page) -> list[str]:
    """Texts of the notifications currently shown (Panel uses notyf)."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.notyf__toast'))
        .map(e => e.innerText)""")


def wait_notification(page, needle: str, timeout: float = 30.0) -> str:
    shown = poll(page, lambda: notifications(page), lambda ts: any(needle in t for t in ts),
                 timeout, 100, f"a notification containing {needle!r}")
    return next(t for t in shown if needle in t)


def slider_handle(page, label_prefix: str):
    """The noUiSlider handle of the first slider whose title starts with ``label_prefix``."""
    sliders = page.locator(".bk-input-group").filter(
        has=page.locator(".bk-slider-title", has_text=label_prefix))
    return sliders.first.locator(".noUi-handle").first


def drag_handle(page, handle, dx: float) -> None:
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y, steps=4)
    page.mouse.up()


# Axis labels and legend entries of every rendered Bokeh figure, by title.
PLOT_LABELS_JS = figures_js("""
    if (m && m.title !== undefined && m.left !== undefined) {
      const side = (xs) => (xs || []).filter(r => r.axis_label !== undefined)
        .map(r => r.axis_label);
      const all = [...(m.left || []), ...(m.right || []), ...(m.center || []),
                   ...(m.above || []), ...(m.below || [])];
      const legend = all.filter(r => r.items !== undefined)
        .flatMap(r => r.items.map(it => it.label ? (it.label.value ?? '') : ''));
      const column = (name) => (m.renderers || []).flatMap(r => {
        const d = r.data_source && r.data_source.data;
        return d && d[name] !== undefined ? Array.from(d[name]).map(String) : [];
      });
      out.push({title: m.title ? m.title.text : '', x: side(m.below), y: side(m.left),
                legend: legend, references: column('reference')});
    }""")


def plot_labels(page, title_prefix: str, timeout: float = 60.0, predicate=None) -> dict:
    """``{title, x: [x-axis labels], y: [y-axis labels], legend: [labels], references:
    [values of the "reference" column of its glyphs]}`` of the figure whose title starts
    with ``title_prefix`` (and that satisfies ``predicate``, if given)."""
    return _first_figure(page, lambda: [f for f in page.evaluate(PLOT_LABELS_JS)
                                        if f["title"].startswith(title_prefix)],
                         predicate, timeout, title_prefix)


def _first_figure(page, probe, predicate, timeout: float, title_prefix: str) -> dict:
    """The first figure of ``probe()`` (a list) satisfying ``predicate`` (any, if None),
    polled until ``timeout``."""
    ok = predicate or (lambda f: True)
    figs = poll(page, probe, lambda fs: any(ok(f) for f in fs), timeout,
                what=f"a plot titled {title_prefix!r}")
    return next(f for f in figs if ok(f))


# Ranges and glyph renderers of the visible figures whose title starts with a prefix.
FIGURE_JS = figures_js("""
    if (m && m.title !== undefined && m.x_range !== undefined && v.el
        && v.el.getBoundingClientRect().width > 0
        && (m.title ? m.title.text : '').startsWith(prefix)) {
      const val = (p) => (p && typeof p === 'object' && 'value' in p) ? p.value : p;
      out.push({
        title: m.title.text,
        x: [m.x_range.start, m.x_range.end], y: [m.y_range.start, m.y_range.end],
        renderers: (m.renderers || []).filter(r => r.glyph).map(r => {
          const d = r.data_source ? r.data_source.data : {};
          const cols = {};
          for (const k of Object.keys(d)) {
            if (['block', 'layer', 'left', 'right', 'top', 'bottom'].includes(k)) cols[k] = Array.from(d[k]);
          }
          const g = r.glyph, ng = r.nonselection_glyph;
          return {type: g.type, columns: cols,
                  image: d.image !== undefined ? [d.dw && d.dw[0], d.dh && d.dh[0]] : null,
                  fill_alpha: val(g.fill_alpha),
                  nonselection_fill_alpha: ng ? val(ng.fill_alpha) : null};
        }),
      });
    }""", "prefix")


def figure_state(page, title_prefix: str, timeout: float = 60.0, predicate=None) -> dict:
    """``{title, x: [start, end], y: [start, end], renderers: [{type, columns (block, layer,
    left/right/top/bottom data), image: [dw, dh] or None, fill_alpha, nonselection_fill_alpha}]}`` of the
    visible figure whose title starts with ``title_prefix`` (satisfying ``predicate``)."""
    return _first_figure(page, lambda: page.evaluate(FIGURE_JS, title_prefix), predicate,
                         timeout, title_prefix)


def stable_plot_box(page, title_prefix: str, timeout: float = 60.0) -> dict:
    """:func:`plot_box`, once it stops moving (plots around it may still be laying out)."""
    box = plot_box(page, title_prefix, timeout)
    for _ in range(50):
        page.wait_for_timeout(200)
        again = plot_box(page, title_prefix, timeout)
        if again == box:
            return box
        box = again
    return box


def click_data(page, box: dict, fig: dict, x: float, y: float) -> None:
    """Click the data point (x, y) of a figure (``box`` from :func:`stable_plot_box`, ranges
    from :func:`figure_state`; inverted ranges are handled)."""
    (x0, x1), (y0, y1) = fig["x"], fig["y"]
    px = box["x"] + box["w"] * (x - x0) / (x1 - x0)
    py = box["y"] + box["h"] * (1 - (y - y0) / (y1 - y0))
    page.mouse.click(px, py)
