"""Helpers for driving the served dashboard with playwright (Bokeh renders into shadow DOM)."""

from __future__ import annotations

import time

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
PLOT_BOXES_JS = """
() => {
  const out = [];
  const seen = new Set();
  function walk(v) {
    if (!v || seen.has(v)) return;
    seen.add(v);
    const m = v.model;
    if (m && m.title !== undefined && v.frame && v.el) {
      const r = v.el.getBoundingClientRect();
      const b = v.frame.bbox;
      if (r.width > 0) out.push({title: m.title ? m.title.text : '', x: r.left + b.x0,
                                 y: r.top + b.y0, w: b.width, h: b.height});
    }
    for (const k of (v.child_views || [])) walk(k);
  }
  for (const v of Object.values(Bokeh.index)) walk(v);
  return out;
}
"""


def pane_text(page, cls: str) -> str:
    """Visible text of the first Panel pane with css class ``cls`` ("" if none)."""
    texts = page.evaluate(PANE_TEXT_JS, cls)
    return texts[0] if texts else ""


def wait_pane_text(page, cls: str, predicate, timeout: float = 60.0) -> str:
    """Poll until ``predicate(text)`` holds for the pane ``cls``; returns the text."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = pane_text(page, cls)
        if predicate(text):
            return text
        page.wait_for_timeout(100)
    raise AssertionError(f"pane .{cls} never matched; last text: {text!r}")


def plot_box(page, title_prefix: str, timeout: float = 60.0) -> dict:
    """Frame box ``{x, y, w, h}`` of the visible figure whose title starts with the prefix."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for box in page.evaluate(PLOT_BOXES_JS):
            if box["title"].startswith(title_prefix) and box["w"] > 0:
                return box
        page.wait_for_timeout(200)
    raise AssertionError(f"no plot titled {title_prefix!r} appeared")


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for text in notifications(page):
            if needle in text:
                return text
        page.wait_for_timeout(100)
    raise AssertionError(f"no notification containing {needle!r}; shown: {notifications(page)}")


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
PLOT_LABELS_JS = """
() => {
  const out = [];
  const seen = new Set();
  function walk(v) {
    if (!v || seen.has(v)) return;
    seen.add(v);
    const m = v.model;
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
    }
    for (const k of (v.child_views || [])) walk(k);
  }
  for (const v of Object.values(Bokeh.index)) walk(v);
  return out;
}
"""


def plot_labels(page, title_prefix: str, timeout: float = 60.0, predicate=None) -> dict:
    """``{title, x: [x-axis labels], y: [y-axis labels], legend: [labels], references:
    [values of the "reference" column of its glyphs]}`` of the figure whose title starts
    with ``title_prefix`` (and that satisfies ``predicate``, if given)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for fig in page.evaluate(PLOT_LABELS_JS):
            if fig["title"].startswith(title_prefix):
                last = fig
                if predicate is None or predicate(fig):
                    return fig
        page.wait_for_timeout(200)
    raise AssertionError(f"no plot titled {title_prefix!r} matched; last: {last}")


# Ranges and glyph renderers of the figure whose title starts with a prefix.
FIGURE_JS = """
(prefix) => {
  const seen = new Set();
  let found = null;
  function walk(v) {
    if (!v || seen.has(v) || found) return;
    seen.add(v);
    const m = v.model;
    if (m && m.title !== undefined && m.x_range !== undefined && v.el
        && v.el.getBoundingClientRect().width > 0
        && (m.title ? m.title.text : '').startsWith(prefix)) {
      const val = (p) => (p && typeof p === 'object' && 'value' in p) ? p.value : p;
      found = {
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
      };
    }
    for (const k of (v.child_views || [])) walk(k);
  }
  for (const v of Object.values(Bokeh.index)) walk(v);
  return found;
}
"""


def figure_state(page, title_prefix: str, timeout: float = 60.0, predicate=None) -> dict:
    """``{title, x: [start, end], y: [start, end], renderers: [{type, columns (block, layer,
    left/right/top/bottom data), image: [dw, dh] or None, fill_alpha, nonselection_fill_alpha}]}`` of the
    visible figure whose title starts with ``title_prefix`` (satisfying ``predicate``)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = page.evaluate(FIGURE_JS, title_prefix)
        if last is not None and (predicate is None or predicate(last)):
            return last
        page.wait_for_timeout(200)
    raise AssertionError(f"no figure titled {title_prefix!r} matched; last: {last}")


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
