"""`--scheduler`: a malformed address or something that is not a Dask scheduler (a web server
on 127.0.0.1) is a one-line error after a bounded wait; a real scheduler passes."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from tests.contract import assert_user_error, run_cli
from wsviz.commands.search import check_scheduler
from wsviz.errors import WsvizError


@pytest.fixture
def http_port():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("addr", ["bogus!!", "tcp://", "tcp://host:99999", "ftp://h:1",
                                  "tcp://a b:1"])
def test_malformed_addresses_are_refused(addr):
    with pytest.raises(WsvizError, match="--scheduler"):
        check_scheduler(addr)


def test_cli_bogus_scheduler_is_one_line(tmp_path):
    space = tmp_path / "s.yml"
    space.write_text("params:\n  lambda: {low: 0.2, high: 2.0}\n")
    assert_user_error(run_cli(["search", tmp_path / "r.json", "--space", space, "--eval", "x",
                               "--scheduler", "bogus!!"]), "not a Dask scheduler address")


def test_a_web_server_is_not_a_scheduler_and_the_wait_is_bounded(http_port):
    with pytest.raises(WsvizError, match="not a Dask scheduler .*sent nothing within 1 s"):
        check_scheduler(f"tcp://127.0.0.1:{http_port}", wait_s=1.0)
    with pytest.raises(WsvizError, match="not a Dask scheduler"):
        check_scheduler(f"127.0.0.1:{http_port}", wait_s=1.0)


def test_a_closed_port_cannot_be_reached():
    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(WsvizError, match="cannot reach the Dask scheduler"):
            check_scheduler(f"tcp://127.0.0.1:{port}", wait_s=5.0)


def test_a_real_scheduler_passes():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        check_scheduler(cluster.scheduler_address, wait_s=30.0)
