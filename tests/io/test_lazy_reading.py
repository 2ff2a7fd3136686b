"""Reading one tensor of a large sharded checkpoint reads only that tensor.

Proved two ways: the safetensors reader's byte counter, and the peak RSS of a fresh
process that opens the checkpoint and reads one tensor (must stay far below the size
of the checkpoint). No timers.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import save_file

from tests.checkpoints import save_bin
from wsviz.io import open_source

SHARD_MB = 128
N_SHARDS = 4


def _big_sharded(root):
    weight_map = {}
    for s in range(N_SHARDS):
        fname = f"model-{s + 1:05d}-of-{N_SHARDS:05d}.safetensors"
        tensors = {f"layers.{s}.big.weight": torch.full((SHARD_MB * 256, 1024), float(s))}
        tensors[f"layers.{s}.small.weight"] = torch.arange(16.0).reshape(4, 4) + s
        save_file(tensors, root / fname)
        weight_map.update({n: fname for n in tensors})
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return root


_PROBE = """
import resource, sys, torch
from wsviz.io import open_source
src = open_source(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = src.get(sys.argv[2])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, float(t.sum()), getattr(src, "bytes_read", -1))
"""


def _probe(path, name):
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path), name],
                         capture_output=True, text=True, check=True).stdout.split()
    before, after = int(out[0]), int(out[1])
    return (after - before) / 1024, float(out[2]), int(out[3])  # MiB growth, sum, bytes


def test_one_tensor_from_sharded_safetensors(tmp_path):
    root = _big_sharded(tmp_path)
    total_mb = N_SHARDS * SHARD_MB
    src = open_source(root)
    t = src.get("layers.2.small.weight")
    assert torch.equal(t, torch.arange(16.0).reshape(4, 4) + 2)
    assert src.bytes_read == 16 * 4, "read bytes of other tensors"
    grew_mb, s, nbytes = _probe(root, "layers.3.small.weight")
    assert s == float((torch.arange(16.0) + 3).sum()) and nbytes == 64
    assert grew_mb < 0.1 * total_mb, f"RSS grew {grew_mb:.0f} MiB for a 64-byte tensor"


def test_one_tensor_from_sharded_bin_is_memory_mapped(tmp_path):
    sd = {f"layers.{s}.big.weight": torch.full((SHARD_MB * 256, 512), float(s)) for s in range(2)}
    sd["layers.0.small.weight"] = torch.ones(4, 4)
    root = save_bin(sd, tmp_path, shards=3)
    del sd
    grew_mb, s, _ = _probe(root, "layers.0.small.weight")
    assert s == 16.0
    assert grew_mb < 0.1 * SHARD_MB, f"RSS grew {grew_mb:.0f} MiB reading a 64-byte tensor"
    assert open_source(root).get("layers.1.big.weight")[0, 0] == 1.0
