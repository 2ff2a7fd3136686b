"""Bad input gives a clear error naming the file or tensor; nothing executes or is written."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from tests.checkpoints import build_lora_adapter, make_llama
from wsviz.errors import AlignmentError, CheckpointError, NonFiniteError
from wsviz.io import ModelSet, open_source


def test_nonexistent_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        open_source(tmp_path / "nope")


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no model weights found"):
        open_source(tmp_path)


def test_unknown_suffix(tmp_path):
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        open_source(tmp_path / "w.npz")


@pytest.fixture
def st_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.randn(64, 64), "b": torch.randn(8)}, path)
    return path


def test_truncated_safetensors(st_file):
    data = st_file.read_bytes()
    st_file.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"w\.safetensors.*(truncated|outside)"):
        open_source(st_file)
    st_file.write_bytes(data[:20])
    with pytest.raises(CheckpointError, match="truncated"):
        open_source(st_file)


def test_corrupt_safetensors_header(st_file):
    data = bytearray(st_file.read_bytes())
    data[10:20] = b"\xff" * 10
    st_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"w\.safetensors: corrupt safetensors header"):
        open_source(st_file)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['WSVIZ_EVIL_MARKER']}",))


def test_malicious_pickle_is_refused_without_executing(tmp_path, monkeypatch):
    marker = tmp_path / "executed"
    monkeypatch.setenv("WSVIZ_EVIL_MARKER", str(marker))
    for name, obj in [("evil.bin", {"w": torch.ones(2), "x": _Evil()}), ("evil2.pt", _Evil())]:
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=rf"{name}: refused to unpickle"):
            open_source(tmp_path / name)
    (tmp_path / "raw.bin").write_bytes(pickle.dumps(_Evil()))  # legacy, non-zip pickle
    with pytest.raises(CheckpointError, match="raw.bin"):
        open_source(tmp_path / "raw.bin")
    assert not marker.exists(), "pickled code was executed"


def test_bin_with_non_tensor_entries(tmp_path):
    torch.save({"w": torch.ones(2), "step": 3}, tmp_path / "m.bin")
    with pytest.raises(CheckpointError, match="'step' is a int, not a tensor"):
        open_source(tmp_path / "m.bin")
    torch.save([torch.ones(2)], tmp_path / "l.bin")
    with pytest.raises(CheckpointError, match="not a state dict"):
        open_source(tmp_path / "l.bin")


def test_index_naming_missing_shard(tmp_path, llama_set):
    llama_set.base_model.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / victim).unlink()
    with pytest.raises(CheckpointError, match=victim):
        open_source(tmp_path)


def test_shape_and_name_mismatch_is_reported_by_name(tmp_path, llama_set):
    other = make_llama(3, intermediate_size=48)
    sd = other.state_dict()
    del sd["model.layers.0.self_attn.q_proj.weight"]
    with pytest.raises(AlignmentError) as err:
        ModelSet.open(llama_set.base, [sd], labels=["odd"])
    msg = str(err.value)
    assert "odd: missing 1: model.layers.0.self_attn.q_proj.weight" in msg
    assert "model.layers.0.mlp.up_proj.weight (64, 32) vs (48, 32)" in msg
    rep = err.value.report
    assert not rep.ok and len(rep.shape_mismatch["odd"]) == 12
    ms = ModelSet.open(llama_set.base, [sd], labels=["odd"], strict=False)
    assert "model.layers.0.self_attn.q_proj.weight" not in ms.names
    assert all("mlp" not in n for n in ms.names if ms.layer(n).block is not None)


def test_nan_inf_are_reported_not_propagated(tmp_path, llama_set):
    sd = {k: v.clone() for k, v in llama_set.base_model.state_dict().items()}
    sd["model.layers.2.mlp.up_proj.weight"][3, 4] = float("nan")
    sd["model.norm.weight"][0] = float("inf")
    save_file(sd, tmp_path / "bad.safetensors")
    ms = ModelSet.open(llama_set.base, [tmp_path / "bad.safetensors"])
    with pytest.raises(NonFiniteError, match=r"bad\.safetensors: tensor 'model\.layers\.2\.mlp\.up_proj\.weight' holds 1 NaN/Inf"):
        ms.deltas("model.layers.2.mlp.up_proj.weight")
    with pytest.raises(NonFiniteError, match="model.norm.weight"):
        ms.get("bad", "model.norm.weight")
    assert ms.deltas("model.layers.1.mlp.up_proj.weight").isfinite().all()


def test_adapter_targets_not_in_base(tmp_path, llama_set):
    adapter = build_lora_adapter(llama_set.base_model, tmp_path / "lora")
    gpt_like = {k.replace("self_attn", "attn"): v for k, v in llama_set.base_model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"adapter targets 'model\.layers\.0\.self_attn\.(q|v)_proj\.weight', which is not a tensor of the base"):
        ModelSet.open(gpt_like, [adapter])
    small = make_llama(2, hidden_size=16, num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(CheckpointError, match="belongs to another base"):
        ModelSet.open(small, [adapter])


def test_deleted_untied_head_is_missing_not_tied(tmp_path, llama_set):
    sd = {k: v.contiguous() for k, v in llama_set.ft_models[0].state_dict().items()}
    del sd["lm_head.weight"]
    (tmp_path / "nohead").mkdir()
    save_file(sd, tmp_path / "nohead" / "model.safetensors")  # no config.json: no tie known
    with pytest.raises(AlignmentError, match="missing 1: lm_head.weight"):
        ModelSet.open(llama_set.base, [tmp_path / "nohead"])
    (tmp_path / "nohead" / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    with pytest.raises(AlignmentError, match="missing 1: lm_head.weight"):
        ModelSet.open(llama_set.base, [tmp_path / "nohead"])


def test_in_memory_and_file_state_dicts_share_one_check(tmp_path):
    """A dict with a non-tensor entry is refused the same way in memory and in a .pt file,
    naming the source, the entry and the fix."""
    from wsviz.io.memory import StateDictSource

    sd = {"w": torch.zeros(2), "step": 3}
    with pytest.raises(CheckpointError, match=r"<mine>: entry 'step' is a int, not a tensor; "
                                              r"save a plain state dict"):
        StateDictSource(sd, label="mine")
    p = tmp_path / "m.pt"
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match=r"m\.pt: entry 'step' is a int, not a tensor; "
                                              r"save a plain state dict"):
        open_source(p)
