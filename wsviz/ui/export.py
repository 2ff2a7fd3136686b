"""Export: the merge tuner's current recipe as mergekit YAML (validated; the reason shown when
a method cannot be expressed in mergekit) and JSON, download buttons, and writing the merged
weights to a directory with progress and overwrite protection.

The browser names only a folder *inside* the workspace's export root (set at launch with
``--export-root``): ``..``, absolute paths elsewhere and symlinks leading out are refused, and
so is any name that is, contains or lies inside a served model, overwrite or not."""

from __future__ import annotations

import io

import panel as pn
import param
from panel.viewable import Viewer

from wsviz.ui.merge_tuner import MergeTuner
from wsviz.ui.session import Session
from wsviz.ui.text import Md, SafeMarkdown, md
from wsviz.ui.widgets import write_folder_async


class Export(Viewer):
    """Follows ``tuner.recipe``."""

    yaml_text = param.String(default=None, allow_None=True, doc="mergekit YAML, if expressible.")
    yaml_reason = param.String(default=None, allow_None=True,
                               doc="Why the recipe cannot be written as mergekit YAML.")
    json_text = param.String(default="", doc="JSON recipe.")
    written = param.String(default=None, allow_None=True, doc="Last directory written.")

    def __init__(self, session: Session, tuner: MergeTuner, **params):
        super().__init__(**params)
        self.session = session
        self.tuner = tuner
        self._status = SafeMarkdown("", css_classes=["wsviz-export-status"],
                                    sizing_mode="stretch_width")
        self._yaml = pn.widgets.CodeEditor(value="", language="yaml", readonly=True,
                                           height=280, sizing_mode="stretch_width")
        self._json = pn.widgets.CodeEditor(value="", language="json", readonly=True,
                                           height=280, sizing_mode="stretch_width")
        self._dl_yaml = pn.widgets.FileDownload(callback=self._yaml_file, filename="merge.yml",
                                                label="Download mergekit YAML",
                                                button_type="primary", width=240,
                                                css_classes=["wsviz-dl-yaml"])
        self._dl_json = pn.widgets.FileDownload(callback=self._json_file,
                                                filename="recipe.json",
                                                label="Download JSON recipe", width=240)
        root = session.workspace.export_root
        self._outdir = pn.widgets.TextInput(name=f"Output folder (inside {root})",
                                            placeholder="merged-model", width=420)
        self._force = pn.widgets.Checkbox(name="overwrite if it exists", value=False)
        self._write_btn = pn.widgets.Button(name="Write merged weights", button_type="success",
                                            width=200)
        self._write_btn.on_click(lambda e: self.write())
        self._progress = pn.indicators.Progress(value=0, max=100, width=300, visible=False)
        self._write_msg = SafeMarkdown("")
        tuner.param.watch(self._update, "recipe")
        self._update()

    def _update(self, *_):
        recipe = self.tuner.recipe
        if recipe is None:
            self._status.object = Md("*no valid recipe yet*")
            return
        ws = self.session.workspace
        try:
            self.json_text = ws.recipe_json(recipe)
        except Exception as exc:  # noqa: BLE001
            self.json_text = ""
            self.session.notify_error(exc)
        try:
            text, reason = ws.recipe_yaml(recipe)
        except Exception as exc:  # noqa: BLE001
            text, reason = None, str(exc)
        self.yaml_text, self.yaml_reason = text, reason
        if text is not None:
            self._status.object = Md("**mergekit YAML: valid** — validated by wsviz's strict "
                                     "checker; mergekit reproduces this merge.")
            self._yaml.value = text
        else:
            self._status.object = md("**Not expressible in mergekit:** {}", reason)
            self._yaml.value = f"# not expressible in mergekit:\n# {reason}\n"
        self._json.value = self.json_text
        self._dl_yaml.disabled = text is None

    def _yaml_file(self):
        return io.StringIO(self.yaml_text or "")

    def _json_file(self):
        return io.StringIO(self.json_text or "")

    def write(self, outdir: str | None = None, force: bool | None = None) -> None:
        """Write the merged model to ``outdir`` (off the event loop, with progress)."""
        outdir = (outdir if outdir is not None else self._outdir.value).strip()
        force = self._force.value if force is None else force
        recipe = self.tuner.recipe
        if recipe is None:
            self.session.notify_error("No valid recipe to write yet.")
            return
        if not outdir:
            self.session.notify_error("Type an output folder name first.")
            return
        from wsviz.io.outputs import resolve_under

        try:
            target = resolve_under(self.session.workspace.export_root, outdir)
        except Exception as exc:  # noqa: BLE001 - OutputError: shown, nothing written
            self.session.notify_error(exc)
            self._write_msg.object = Md("**Nothing written** (see the notification).")
            return
        ws = self.session.workspace
        write_folder_async(
            self, "write", target,
            lambda progress: ws.write_merged(recipe, str(target), force, progress=progress),
            "Wrote {path}", "Merged model written to {path}")

    def __panel__(self):
        return pn.Column(
            self._status,
            pn.Row(self._dl_yaml, self._dl_json),
            pn.Tabs(("mergekit YAML", self._yaml), ("JSON recipe", self._json),
                    sizing_mode="stretch_width"),
            SafeMarkdown(Md("#### Write merged weights (HF directory)")),
            pn.Row(self._outdir, self._force, self._write_btn),
            self._progress, self._write_msg,
            sizing_mode="stretch_width",
        )
