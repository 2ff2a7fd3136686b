"""Exported recipes are portable (issue 19.2): a model set opened with relative paths (as a
user types them) exports absolute paths, and the Export tab's mergekit YAML, run by
``mergekit-yaml`` from another directory, offline, with its model card on, rebuilds the
Export tab's merged weights bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

import wsviz.ui  # noqa: F401 - loads the bokeh plotting backend
from wsviz.session import open_workspace
from wsviz.ui.app import build_components


def run_mergekit_yaml(config: Path, out: Path, cwd: Path) -> None:
    """``mergekit-yaml CONFIG OUT`` in ``cwd`` with the Hub offline and the model card on."""
    exe = Path(sys.executable).with_name("mergekit-yaml")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mergekit.scripts.run_yaml"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([*cmd, str(config), str(out), "--quiet"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "README.md").is_file()  # the model card was written


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert set(wa) == set(wb)
    for n in wa:
        assert wa[n].dtype == wb[n].dtype and torch.equal(wa[n], wb[n]), n


def test_export_with_relative_paths_runs_in_mergekit_from_elsewhere(llama_set_bf16, tmp_path,
                                                                     monkeypatch):
    family = llama_set_bf16.base.parent
    monkeypatch.chdir(family)  # the user started wsviz beside the models: `wsviz base ft0 ft1`
    ws = open_workspace("base", ["ft0", "ft1"])
    ws.export_root = tmp_path / "exports"
    c = build_components(ws, analyse=False)
    c.merge.method = "ties"
    c.merge.set("density", 0.4)
    export = c.export
    doc = yaml.safe_load(export.yaml_text)
    assert doc["merge_method"] == "ties"
    assert doc["base_model"] == str(family / "base")
    assert [m["model"] for m in doc["models"]] == [str(family / "ft0"), str(family / "ft1")]
    recipe = json.loads(export.json_text)
    assert Path(recipe["base"]).is_absolute()
    export.write("merged")
    assert export.written == str(tmp_path / "exports" / "merged"), c.session.errors
    config = tmp_path / "merge.yml"
    config.write_text(export.yaml_text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_mergekit_yaml(config, elsewhere / "mk", cwd=elsewhere)
    assert_same_weights(elsewhere / "mk", tmp_path / "exports" / "merged")
