"""Command-line mistakes are one line (exit 2) naming the parameter and the fix."""

from __future__ import annotations

import json
import socket

import pytest

from tests.contract import assert_user_error, run_cli
from tests.ui.conftest import FAKE


@pytest.mark.parametrize("cmd", ["merge", "prune"])
@pytest.mark.parametrize("size", ["abc", "0", "-5", "1e999", "nanGB", "2XB"])
def test_bad_shard_size(tmp_path, cmd, size):
    argv = (["merge", tmp_path / "r.json", "-o", tmp_path / "o"] if cmd == "merge" else
            ["prune", tmp_path, "--method", "magnitude", "--sparsity", "0.5", "-o", tmp_path / "o"])
    assert_user_error(run_cli([*argv, f"--shard-size={size}"]), "--shard-size", "2GB")


@pytest.mark.parametrize("device", ["bogus", "cuda:99", "gpu", "cpu:x"])
def test_bad_device(llama_set, tmp_path, device):
    r = tmp_path / "r.json"
    r.write_text(json.dumps({"method": "linear", "params": {"weight": 1},
                             "models": [str(p) for p in llama_set.fts[:2]]}))
    for argv in (["merge", r, "-o", tmp_path / "o"],
                 ["prune", llama_set.base, "--method", "magnitude", "--sparsity", "0.5",
                  "-o", tmp_path / "o"],
                 ["analyze", llama_set.base, llama_set.fts[0], "-o", tmp_path / "t.csv"],
                 ["serve", "--workspace", FAKE],
                 ["evaluate", "--demo"]):
        assert_user_error(run_cli([*argv, "--device", device]), repr(device))
    assert not (tmp_path / "o").exists() and not (tmp_path / "t.csv").exists()


def test_argparse_errors_are_one_line():
    line = assert_user_error(run_cli(["merge"]), "RECIPE", "--help")
    assert line.startswith("wsviz merge: error:")
    assert_user_error(run_cli(["prune", "x", "--method", "magnitude", "--sparsity", "half",
                               "-o", "y"]), "--sparsity", "half")
    assert_user_error(run_cli(["serve", "--port", "http"]), "--port")
    assert_user_error(run_cli(["nosuchcommand"]), "nosuchcommand")


def test_busy_port_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_user_error(run_cli(["serve", "--workspace", FAKE, "--port", port]),
                          f"port {port}", "in use", "--port 0")


@pytest.mark.parametrize("origin", ["http://a/b", "host:abc", "", "[::1]:5006", "fe80::1"])
def test_bad_allow_origin(origin):
    assert_user_error(run_cli(["serve", "--workspace", FAKE, "--port", "0", "--address",
                               "0.0.0.0", "--allow-origin", origin]), "--allow-origin")
