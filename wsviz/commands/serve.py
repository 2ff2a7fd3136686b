"""``wsviz serve``: the dashboards in a browser (binds 127.0.0.1 unless told otherwise).

The page loads every script, stylesheet and font from this server (nothing from the
internet: it works offline and tells no CDN who visits). With ``--address`` other than
loopback, browsers on other machines may connect from the origins named by
``--allow-origin`` (the host name or address they type, e.g. ``gpu-box:5006``).

Requests (page and websocket) whose ``Host`` is not this machine or a named origin get 403:
tornado >= 6.6 lets a websocket whose ``Origin`` equals its ``Host`` skip Bokeh's origin
allowlist, so without this check a page on any host name that resolves here (a DNS-rebinding
attack) could drive the dashboard.
"""

from __future__ import annotations

import argparse
import ipaddress

from wsviz.commands._types import port_arg
from wsviz.errors import WsvizError
from wsviz.session.args import add_model_args


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="open the dashboards (layer explorer, merge / prune tuners, export)",
        description="Serve the wsviz dashboards for a model set (BASE FT [FT...]) or the "
        "built-in demo zoo (--demo). Prints the URL; binds 127.0.0.1 by default. The "
        "dashboard writes merged weights only under --export-root.",
    )
    add_model_args(p)
    p.add_argument("--port", type=port_arg, default=5006, help="port (0 = any free port)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: only this machine; 0.0.0.0: all "
                   "interfaces, then name the origins with --allow-origin)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="HOST[:PORT]",
                   help="a browser origin allowed to connect, as other machines type it "
                   "(e.g. gpu-box:5006 or 10.0.0.5; the port defaults to --port); repeatable")
    p.add_argument("--show", action=argparse.BooleanOptionalAction, default=False,
                   help="open a browser tab")
    p.set_defaults(func=run)


def is_loopback(address: str) -> bool:
    """``127.x``, ``::1`` and ``localhost`` are loopback; ``0.0.0.0``, ``""`` and any other
    address are reachable from other machines."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def websocket_origins(address: str, port: int, allow: list[str]) -> list[str]:
    """Origins (``host:port``) whose browsers may open the session websocket: this machine
    (``127.0.0.1``, ``localhost``, the bound address when it is a specific one) plus every
    ``--allow-origin`` (a bare host gets ``:port``; ``http://`` prefixes are dropped)."""
    origins = {f"127.0.0.1:{port}", f"localhost:{port}"}
    if address not in ("", "0.0.0.0", "::"):
        origins.add(f"{address}:{port}")
    for o in allow:
        o = o.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
        if not o or "/" in o:
            raise WsvizError(f"--allow-origin {o!r}: give HOST or HOST:PORT (e.g. "
                             f"gpu-box:{port})")
        if o.startswith("[") or o.count(":") > 1:
            raise WsvizError(f"--allow-origin {o!r}: IPv6 literals are not supported by the "
                             "server's origin check; give a host name that resolves to it")
        _, sep, p = o.partition(":")
        if sep and not p.isdigit():
            raise WsvizError(f"--allow-origin {o!r}: the port must be a number")
        origins.add(o if sep else f"{o}:{port}")
    return sorted(origins)


def run(args) -> int:
    import errno

    import panel as pn

    from wsviz.ui import build_page, extension
    from wsviz.ui.launch import workspace_from_args

    print("wsviz: loading the model set…", flush=True)
    ws = workspace_from_args(args)  # builds the demo zoo on first use; errors before serving
    extension()

    def page():
        return build_page(ws)

    try:
        port = args.port or _free_port(args.address)
        origins = websocket_origins(args.address, port, args.allow_origin)
        server = pn.serve({"/": page}, port=port, address=args.address, show=False,
                          start=False, title="wsviz", websocket_origin=origins)
        restrict_hosts(server, origins, allow_remote=remote_allowed(args.address, origins))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise WsvizError(f"port {args.port} on {args.address} is already in use (another "
                             "wsviz or program); pass another --port, or --port 0 for any free "
                             "port") from None
        raise WsvizError(f"cannot listen on {args.address}:{args.port} ({e.strerror or e}); "
                         "check --address (an address of this machine, e.g. 127.0.0.1 or "
                         "0.0.0.0)") from None
    host = "127.0.0.1" if args.address in ("0.0.0.0", "", "::") else args.address
    url = f"http://{host}:{port}/"
    print(f"wsviz: serving at {url}  (Ctrl+C to stop)", flush=True)
    print(f"wsviz: the dashboard writes merged weights under {ws.export_root}", flush=True)
    if not is_loopback(args.address):
        extra = [o for o in origins if not o.startswith(("127.0.0.1:", "localhost:"))]
        print(f"wsviz: other machines may connect from: {', '.join(extra) or 'none'}"
              + ("" if args.allow_origin else
                 f" (add --allow-origin HOST:{port} with the name they type)"), flush=True)
    if args.show:
        import webbrowser

        webbrowser.open(url)
    server.start()
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    return 0


def remote_allowed(address: str, origins: list[str]) -> bool:
    """Whether peers on other machines may connect at all: only when an origin other than
    this machine's loopback names is allowed (``--allow-origin``, or a specific non-loopback
    ``--address`` they type). ``--address 0.0.0.0`` alone ("other machines may connect from:
    none") keeps every non-loopback peer out, whatever ``Host`` it sends."""
    return not is_loopback(address) and any(
        not o.startswith(("127.0.0.1:", "localhost:")) for o in origins)


def peer_is_loopback(remote_ip: str | None) -> bool:
    """The TCP peer address is on this machine (``127.x``, ``::1``, ``::ffff:127.x``)."""
    try:
        ip = ipaddress.ip_address((remote_ip or "").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def restrict_hosts(server, allowed: list[str], allow_remote: bool = True) -> None:
    """Answer 403 to every request of the Bokeh ``server`` whose ``Host`` header is not in
    ``allowed`` (``host:port`` patterns as for ``websocket_origin``), and, unless
    ``allow_remote``, to every request whose TCP peer is not a loopback address (the
    ``Host`` header is the client's word; the peer address is the kernel's). Names the fix
    once per host / peer on stderr."""
    from bokeh.server.util import check_allowlist
    from tornado.web import ErrorHandler

    app = server._tornado
    find = app.find_handler
    told: set[str] = set()

    def find_handler(request, **kwargs):
        host = (request.host or "").lower()
        if not allow_remote and not peer_is_loopback(request.remote_ip):
            _tell(told, f"peer {request.remote_ip}", "refused a connection from "
                  f"{request.remote_ip!r}: this server admits only this machine; restart "
                  "with --allow-origin HOST:PORT (the name other machines type) to admit "
                  "them")
        elif check_allowlist(host, allowed):
            return find(request, **kwargs)
        else:
            _tell(told, host, f"refused a request for host {host!r}; if that is how this "
                  f"machine is reached, restart with --allow-origin {host}")
        return app.get_handler_delegate(request, ErrorHandler, {"status_code": 403})

    app.find_handler = find_handler


def _tell(told: set[str], key: str, message: str) -> None:
    """Print ``wsviz: MESSAGE`` on stderr once per ``key`` (at most 100 keys)."""
    import sys

    if key not in told and len(told) < 100:
        told.add(key)
        print(f"wsviz: {message}", file=sys.stderr, flush=True)


def _free_port(address: str) -> int:
    import socket

    v6 = ":" in address
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET) as s:
        s.bind((address if address not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return s.getsockname()[1]
