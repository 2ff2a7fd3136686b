"""``wsviz serve``: the dashboards in a browser (binds 127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import argparse

from wsviz.commands._model_args import add_model_args


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="open the dashboards (layer explorer, merge / prune tuners, export)",
        description="Serve the wsviz dashboards for a model set (BASE FT [FT...]) or the "
        "built-in demo zoo (--demo). Prints the URL; binds 127.0.0.1 by default.",
    )
    add_model_args(p)
    p.add_argument("--port", type=int, default=5006, help="port (0 = any free port)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: only this machine)")
    p.add_argument("--show", action=argparse.BooleanOptionalAction, default=False,
                   help="open a browser tab")
    p.set_defaults(func=run)


def run(args) -> int:
    import panel as pn

    from wsviz.ui import build_page, extension
    from wsviz.ui.launch import workspace_from_args

    print("wsviz: loading the model set…", flush=True)
    ws = workspace_from_args(args)  # builds the demo zoo on first use; errors before serving
    extension()

    def page():
        return build_page(ws)

    port = args.port or _free_port(args.address)
    origins = [f"{h}:{port}" for h in {args.address, "127.0.0.1", "localhost"}]
    server = pn.serve({"/": page}, port=port, address=args.address, show=False,
                      start=False, title="wsviz", websocket_origin=origins)
    host = "127.0.0.1" if args.address in ("0.0.0.0", "") else args.address
    url = f"http://{host}:{port}/"
    print(f"wsviz: serving at {url}  (Ctrl+C to stop)", flush=True)
    if args.show:
        import webbrowser

        webbrowser.open(url)
    server.start()
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    return 0


def _free_port(address: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((address if address not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return s.getsockname()[1]
