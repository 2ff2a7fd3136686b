"""A hardened reader: crafted headers, escaping shard indexes, symlink loops, unreadable files,
broken LoRA configs and wrong container types all give one line naming the file and the fix."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.checkpoints import build_lora_adapter
from tests.contract import assert_user_error, run_cli
from wsviz.errors import CheckpointError
from wsviz.io import ModelSet, open_source

REPO = Path(__file__).resolve().parents[2]


def st_bytes(header: dict, data: bytes) -> bytes:
    """A safetensors file from a header dict (any JSON) and the data section."""
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def write_st(path: Path, header, data: bytes = b"") -> Path:
    path.write_bytes(st_bytes(header, data))
    return path


def T(dtype="F32", shape=(2,), offs=(0, 8)):  # noqa: N802 - a header entry
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}


GOOD = {"a": T(offs=(0, 8)), "b": T(offs=(8, 16))}


@pytest.mark.parametrize("header,needle", [
    ({"a": T(offs=(0, 8)), "b": T(offs=(4, 12))}, "overlaps"),                 # shared bytes
    ({"a": T(offs=(0, 8)), "b": T(offs=(0, 8))}, "overlaps"),                  # aliased
    ({"a": T(offs=(0, 8)), "b": T(offs=(12, 20))}, "belong to no tensor"),     # a hole
    ({"a": T(offs=(0, 8))}, "after the last tensor"),                          # hidden tail
    ({"a": T(shape=(-2,), offs=(0, 8))}, "non-negative integers"),
    ({"a": T(shape=(2.0,), offs=(0, 8))}, "non-negative integers"),
    ({"a": T(shape=(True, 2), offs=(0, 8))}, "non-negative integers"),
    ({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, "shape"),
    ({"a": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}}, "dtype"),
    ({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, "unsupported dtype"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": {"0": 8}}}, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}}, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2]}}, "no 'data_offsets'"),
    ({"a": [1, 2, 3]}, "is a JSON list"),
    ({"a": None}, "is a JSON NoneType"),
    ({"__metadata__": {"format": 3}, **GOOD}, "__metadata__"),
    ({"__metadata__": ["x"], **GOOD}, "__metadata__"),
])
def test_crafted_header_is_one_line_naming_the_file(tmp_path, header, needle):
    ends = [e["data_offsets"][1] for e in header.values() if isinstance(e, dict)
            and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2]
    size = max([16, *(int(x) for x in ends if isinstance(x, (int, float)))])
    f = write_st(tmp_path / "w.safetensors", header, bytes(size))
    with pytest.raises(CheckpointError, match=needle):
        open_source(f)
    assert_user_error(run_cli(["info", f]), str(f), needle)


def test_header_that_is_not_an_object(tmp_path):
    for i, h in enumerate(([1, 2], "x", 3, None)):
        f = write_st(tmp_path / f"w{i}.safetensors", h, b"")
        assert_user_error(run_cli(["info", f]), str(f), "not an object")


def test_valid_handmade_file_still_reads(tmp_path):
    data = torch.arange(4, dtype=torch.float32).numpy().tobytes()
    f = write_st(tmp_path / "w.safetensors",
                 {"__metadata__": {"format": "pt"}, "b": T(offs=(8, 16)), "a": T(offs=(0, 8)),
                  "e": T(shape=(0, 3), offs=(16, 16))}, data)
    src = open_source(f)
    assert torch.equal(src.get("b"), torch.tensor([2.0, 3.0]))
    assert src.info("e").shape == (0, 3)


# -- shard indexes -------------------------------------------------------------------------------
@pytest.fixture
def sharded(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    save_file({"x": torch.ones(4)}, d / "model-00001-of-00002.safetensors")
    save_file({"y": torch.ones(4)}, d / "model-00002-of-00002.safetensors")
    (d / "config.json").write_text("{}")
    return d


def _index(d: Path, weight_map) -> Path:
    p = d / "model.safetensors.index.json"
    p.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return p


@pytest.mark.parametrize("target", ["../outside.safetensors", "ABS", "/etc/passwd",
                                    "sub/../../outside.safetensors", "model.bin", ""])
def test_index_may_not_escape_the_model_directory(sharded, target):
    outside = sharded.parent / "outside.safetensors"
    save_file({"y": torch.ones(4)}, outside)
    if target == "ABS":
        target = str(outside)
    idx = _index(sharded, {"x": "model-00001-of-00002.safetensors", "y": target})
    with pytest.raises(CheckpointError, match="inside"):
        open_source(sharded)
    assert_user_error(run_cli(["info", sharded]), str(idx), "'y'", "inside")


@pytest.mark.parametrize("doc,needle", [
    ({"weight_map": ["model-00001-of-00002.safetensors"]}, "weight_map"),
    ({"weight_map": "model-00001-of-00002.safetensors"}, "weight_map"),
    ({"weight_map": {}}, "weight_map"),
    ({"weight_map": {"x": 5}}, "mapped to 5"),
    ({"weight_map": {"x": None}}, "mapped to None"),
    ({"weight_map": {"x": ["a"]}}, "mapped to"),
    ({"nothing": 1}, "weight_map"),
    ([1, 2], "not an object"),
])
def test_index_of_the_wrong_type(sharded, doc, needle):
    (sharded / "model.safetensors.index.json").write_text(json.dumps(doc))
    assert_user_error(run_cli(["info", sharded]), "model.safetensors.index.json", needle)


def test_config_of_the_wrong_type_or_encoding(sharded):
    _index(sharded, {"x": "model-00001-of-00002.safetensors",
                     "y": "model-00002-of-00002.safetensors"})
    (sharded / "config.json").write_text("[1, 2]")
    assert_user_error(run_cli(["info", sharded]), "config.json", "not an object")
    (sharded / "config.json").write_bytes(b'{"a": "\xff\xfe"}')
    assert_user_error(run_cli(["info", sharded]), "config.json", "UTF-8")


# -- symlink loops, unreadable files -------------------------------------------------------------
def test_symlink_loops(tmp_path, sharded):
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    assert_user_error(run_cli(["info", loop]), str(loop))
    # a loose *.safetensors in a model dir that loops
    d = tmp_path / "loose"
    d.mkdir()
    save_file({"x": torch.ones(2)}, d / "a.safetensors")
    (d / "b.safetensors").symlink_to(d / "c.safetensors")
    (d / "c.safetensors").symlink_to(d / "b.safetensors")
    assert_user_error(run_cli(["info", d]), "b.safetensors")
    # an index shard that loops
    (sharded / "model-00002-of-00002.safetensors").unlink()
    (sharded / "model-00002-of-00002.safetensors").symlink_to(sharded / "z.safetensors")
    (sharded / "z.safetensors").symlink_to(sharded / "model-00002-of-00002.safetensors")
    _index(sharded, {"x": "model-00001-of-00002.safetensors",
                     "y": "model-00002-of-00002.safetensors"})
    assert_user_error(run_cli(["info", sharded]), "model-00002-of-00002.safetensors")
    # a recipe that loops, and an output that loops
    r = tmp_path / "r.json"
    r.symlink_to(tmp_path / "r2.json")
    (tmp_path / "r2.json").symlink_to(r)
    assert_user_error(run_cli(["merge", r, "-o", tmp_path / "o"]), "r.json")


_UNREADABLE = r"""
import json, sys
from tests.contract import run_cli
cases = json.loads(sys.argv[1])
print(json.dumps([run_cli(argv) for argv in cases]))
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_unreadable_files_are_one_line(tmp_path, sharded, llama_set):
    """Files with mode 000. Root ignores modes, so as root the child runs without the
    DAC-override capabilities (``setpriv``), like an ordinary user."""
    cmd = [sys.executable, "-c", _UNREADABLE]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    single = tmp_path / "w.safetensors"
    save_file({"x": torch.ones(2)}, single)
    _index(sharded, {"x": "model-00001-of-00002.safetensors",
                     "y": "model-00002-of-00002.safetensors"})
    shard = sharded / "model-00002-of-00002.safetensors"
    recipe = tmp_path / "r.json"
    recipe.write_text('{"method": "linear", "models": ["a", "b"]}')
    cfg = llama_set.base / "config.json"
    base_copy = tmp_path / "base"
    shutil.copytree(llama_set.base, base_copy)
    cfg = base_copy / "config.json"
    for p in (single, shard, recipe, cfg):
        p.chmod(0)
    cases = [["info", str(single)], ["info", str(sharded)], ["merge", str(recipe), "-o",
             str(tmp_path / "o")], ["info", str(base_copy)]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([*cmd, json.dumps(cases)], env=env, capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(p.stdout.strip().splitlines()[-1])
    for res, needle in zip(results, ("w.safetensors", "model-00002-of-00002", "r.json",
                                     "config.json")):
        line = assert_user_error(tuple(res), needle)
        assert "ermission denied" in line, line


# -- LoRA adapters -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter(llama_set, tmp_path_factory):
    return build_lora_adapter(llama_set.base_model, tmp_path_factory.mktemp("lora") / "a")


@pytest.mark.parametrize("change,needle", [
    ({"r": 0}, "r is 0"),
    ({"r": -4}, "r is -4"),
    ({"r": "8"}, "r is '8'"),
    ({"r": 4.5}, "r is 4.5"),
    ({"lora_alpha": float("nan")}, "lora_alpha"),
    ({"lora_alpha": "16"}, "lora_alpha"),
    ({"rank_pattern": ["q_proj"]}, "rank_pattern"),
    ({"rank_pattern": {"q_proj": 0}}, "rank_pattern"),
    ({"rank_pattern": {"(": 4}}, "regular expression"),
    ({"alpha_pattern": {"q_proj": None}}, "alpha_pattern"),
    ({"use_rslora": "yes"}, "use_rslora"),
    ({"peft_type": 3}, "peft_type"),
])
def test_lora_config_errors(adapter, llama_set, tmp_path, change, needle):
    a = tmp_path / "adapter"
    shutil.copytree(adapter, a)
    cfg = json.loads((a / "adapter_config.json").read_text())
    cfg.update(change)
    (a / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        ModelSet.open(llama_set.base, [a])
    assert_user_error(run_cli(["info", llama_set.base, a]), "adapter_config.json", needle)


def test_lora_config_that_is_not_an_object_and_mismatched_ranks(adapter, tmp_path):
    a = tmp_path / "adapter"
    shutil.copytree(adapter, a)
    (a / "adapter_config.json").write_text('["LORA"]')
    assert_user_error(run_cli(["info", a]), "adapter_config.json", "not an object")
    shutil.rmtree(a)
    shutil.copytree(adapter, a)
    from safetensors.torch import load_file

    sd = load_file(str(a / "adapter_model.safetensors"))
    k = next(k for k in sd if "lora_A" in k)
    sd[k] = torch.zeros(sd[k].shape[0] + 1, sd[k].shape[1])
    save_file(sd, a / "adapter_model.safetensors")
    assert_user_error(run_cli(["info", a]), "adapter_model.safetensors", "same r")


def test_wrong_container_types_in_pickles(tmp_path):
    for i, obj in enumerate(([torch.ones(2)], torch.ones(3), {"a": [torch.ones(2)]}, 7)):
        f = tmp_path / f"w{i}.pt"
        torch.save(obj, f)
        assert_user_error(run_cli(["info", f]), str(f))
