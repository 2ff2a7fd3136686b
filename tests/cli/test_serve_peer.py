"""`wsviz serve --address 0.0.0.0` without `--allow-origin` admits only loopback peers: the
check reads the TCP peer address (the kernel's word), not only ``Host`` (the client's word).
No traffic leaves the loopback: the non-loopback peers are requests built in-process."""

from __future__ import annotations

import pytest
from tornado.httputil import HTTPHeaders, HTTPServerRequest
from tornado.web import ErrorHandler

from tests.contract import assert_user_error, run_cli
from wsviz.commands.serve import (
    peer_is_loopback,
    remote_allowed,
    restrict_hosts,
    websocket_origins,
)


@pytest.fixture
def server():
    import panel as pn

    srv = pn.serve({"/": lambda: pn.pane.Markdown("x")}, port=0, address="127.0.0.1",
                   show=False, start=False, websocket_origin=["127.0.0.1:5006"])
    yield srv
    srv.unlisten()


def _handler(srv, host: str, peer: str, path: str = "/"):
    req = HTTPServerRequest(method="GET", uri=path, headers=HTTPHeaders({"Host": host}))
    req.remote_ip = peer
    return srv._tornado.find_handler(req).handler_class


@pytest.mark.parametrize("address,allow,remote", [
    ("0.0.0.0", [], False), ("::", [], False), ("127.0.0.1", [], False),
    ("0.0.0.0", ["gpu-box"], True), ("10.1.2.3", [], True)])
def test_remote_allowed_only_when_an_origin_names_this_machine(address, allow, remote):
    assert remote_allowed(address, websocket_origins(address, 5006, allow)) is remote


@pytest.mark.parametrize("peer,ok", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True),
                                     ("::ffff:127.0.0.1", True), ("192.0.2.7", False),
                                     ("10.0.0.5", False), ("fe80::1%eth0", False), ("", False),
                                     (None, False)])
def test_peer_is_loopback(peer, ok):
    assert peer_is_loopback(peer) is ok


def test_a_remote_peer_with_a_forged_host_is_refused(server, capsys):
    origins = websocket_origins("0.0.0.0", 5006, [])
    restrict_hosts(server, origins, allow_remote=remote_allowed("0.0.0.0", origins))
    # the page and the session websocket, Host forged to this machine's loopback name
    for path in ("/", "/ws"):
        assert _handler(server, "127.0.0.1:5006", "192.0.2.7", path) is ErrorHandler
        assert _handler(server, "127.0.0.1:5006", "127.0.0.1", path) is not ErrorHandler
    assert _handler(server, "evil.example:5006", "127.0.0.1") is ErrorHandler
    err = capsys.readouterr().err
    assert "192.0.2.7" in err and "--allow-origin" in err


def test_with_allow_origin_remote_peers_pass_the_host_check(server):
    origins = websocket_origins("0.0.0.0", 5006, ["gpu-box"])
    restrict_hosts(server, origins, allow_remote=remote_allowed("0.0.0.0", origins))
    assert _handler(server, "gpu-box:5006", "192.0.2.7") is not ErrorHandler
    assert _handler(server, "127.0.0.1:5006", "192.0.2.7") is not ErrorHandler
    assert _handler(server, "evil.example:5006", "192.0.2.7") is ErrorHandler


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_port_out_of_range_is_one_line(port):
    assert_user_error(run_cli(["serve", "--demo", "--port", port]), "--port")
