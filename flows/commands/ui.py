"""`mediabind ui`: the search page and JSON API for analysts (``web.app``).

    mediabind ui                       # http://127.0.0.1:8765/
    mediabind ui --host 0.0.0.0 --token "$(openssl rand -hex 16)"

It reads the same store, settings and collection as ``mediabind search``. An
embedded store admits one process: while the page runs it holds the store, and
runs started meanwhile (`mediabind ingest`, scheduled flows) are handed to it
(``flows.handoff``), so search stays up while they ingest.
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import socket
import sys
from typing import Any

from schemas import Settings


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "ui", help="serve the search page and JSON API",
        description="Serve the search page (/), the runs page (/runs) and the JSON API "
                    "(/api, schema at /api/openapi.json).")
    parser.add_argument("--host", default=None, help="default: MEDIABIND_UI_HOST (127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="default: MEDIABIND_UI_PORT")
    parser.add_argument("--token", default=None,
                        help="every request must carry it (default: MEDIABIND_UI_TOKEN); "
                             "required to listen beyond loopback")
    parser.add_argument("--collection", default=None, help="collection or alias to search")
    return parser


def listen_settings(args: argparse.Namespace, settings: Settings) -> tuple[str, int, str | None]:
    """Host, port and token; ValueError when the page would be open to the network."""
    host = args.host or settings.ui_host
    port = settings.ui_port if args.port is None else args.port
    token = args.token or (settings.ui_token.get_secret_value() if settings.ui_token else None)
    if token is None and not is_loopback(host):
        raise ValueError(f"refusing to listen on {host} without a token: anyone who reaches "
                         "it could read the archive. Pass --token (or set MEDIABIND_UI_TOKEN)")
    return host, port, token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from web.app import create_app

    settings = Settings()
    if args.collection:
        settings = settings.model_copy(update={"collection": args.collection})
    host, port, token = listen_settings(args, settings)
    run_secret = secrets.token_urlsafe(24)
    app = create_app(settings, token=token, run_secret=run_secret)
    hold_store(app)
    sock = bound_socket(host, port)  # bound first, so the URL printed is the real one
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{shown}:{bound_port}/"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    stacks_on_request()
    with handed_runs(settings, _reachable_here(url, bound_host, shown), token, run_secret):
        # announced before the URL is printed: a run started after it finds the page
        print(f"mediabind ui: {url}{'?token=TOKEN' if token else ''} "
              f"(collection {settings.collection!r}; Ctrl-C stops)", flush=True)
        server.run(sockets=[sock])
    return 0


def stacks_on_request() -> None:
    """``kill -USR1 <pid>`` prints every thread's stack to stderr: what a long-lived
    page and the runs handed to it are doing, without stopping them."""
    import faulthandler
    import signal

    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def hold_store(app: Any) -> None:
    """Open the store now, so the page holds it from the start (runs then come to it);
    one held by another process is said here and on the page, which keeps trying."""
    from search.backends.lock import StoreLockedError

    try:
        app.state.service.client.store  # noqa: B018 - opened on first use
    except StoreLockedError as exc:
        print(f"mediabind ui: warning: {exc}", file=sys.stderr, flush=True)


def _reachable_here(url: str, host: str, shown: str) -> str:
    """The URL a process on this machine reaches the page at (a wildcard is not one)."""
    here = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host)
    return url.replace(f"//{shown}", f"//{here}") if here else url


def handed_runs(settings: Settings, url: str, token: str | None, run_secret: str) -> Any:
    """While the page runs, runs of its embedded store come to it (``flows.handoff``)."""
    from contextlib import nullcontext

    from flows.handoff import beacon

    if settings.store_kind == "server":
        return nullcontext()
    return beacon(settings, url, token, run_secret)


def bound_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by every accepted connection: without it a keep-alive response sent
    # as headers then body waits ~40 ms for the browser's delayed ACK (Nagle).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another "
                      "--port") from None
    sock.listen(2048)  # connections queue from now on, while the app starts
    sock.set_inheritable(True)
    return sock
