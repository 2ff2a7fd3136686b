"""The wsviz dashboard as a Panel app.

    panel serve apps/wsviz_app.py --args --demo
    panel serve apps/wsviz_app.py --args BASE FT1 FT2 [--eval module:function]

Panel runs this script once per browser session, so every tab gets its own state; the
model set, analysis and evaluator are shared (cached) across sessions.
"""

import logging
import os
import sys

from wsviz.ui import build_page, extension
from wsviz.ui.launch import parse_app_args, workspace_from_args
from wsviz.ui.text import SafeAlert

if os.environ.get("WSVIZ_UI_DEBUG"):
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("wsviz.ui").setLevel(logging.DEBUG)
extension()
try:
    page = build_page(workspace_from_args(parse_app_args(sys.argv[1:])))
except Exception as exc:  # noqa: BLE001 - show the reason in the page instead of a blank one
    page = SafeAlert(f"wsviz could not start: {exc}", alert_type="danger")
page.servable()
