"""``busmon serve``: the dashboard in a web page, with textual-serve (the Textual project's own
server: each page that connects starts its own busmon, drawn in the browser by xterm.js).

What it adds to textual-serve: only busmon command lines that show a dashboard are served; the
address is loopback unless ``--public`` (the page has no login: anyone who reaches it drives
busmon, so binding elsewhere warns); the port is bound here first, so a port in use is one
line, not a traceback; the page's splash (textual-serve's title) and the start-up line show
the command with its secrets masked (a ``--url`` with a password is in the command busmon
runs, never on show); and at Ctrl-C each open page's busmon is told to quit and awaited.
"""

from __future__ import annotations

import asyncio
import shlex
import signal
import socket
import sys
from typing import Any

from busmon.bus.secrets import redact_url, scrub
from busmon.probes.metrics.address import check_host, is_loopback, listen_failure, url_host

#: busmon's commands that show a dashboard (with no command: the interactive one)
DASHBOARDS = ("play", "attach", "replay")
#: busmon's commands that do not (said as such, rather than a page that ends at once)
OTHER_COMMANDS = ("run", "compare", "brokers", "serve")
EXTRA = "in busmon's folder, pip install -e '.[serve]'"
#: at Ctrl-C, how long the pages' busmon processes get to quit (each closes its bus first)
CLOSE_PAGES_S = 15.0


class ServeError(ValueError):
    """What ``busmon serve`` will not serve: one line, exit 2."""


def served_command(args: list[str]) -> list[str]:
    """The busmon command line each page runs, checked: a dashboard's (one line otherwise)."""
    command = args[0] if args and not args[0].startswith("-") else ""
    other = command or next((a for a in args if a in OTHER_COMMANDS), "")
    if other and other not in DASHBOARDS:
        raise ServeError(f"busmon serve -- {other}: only a dashboard can be served (busmon, busmon play, "
                         f"busmon attach, busmon replay), not {other}")
    if given := next((a for a in args if a in ("--version", "--help")), None):
        raise ServeError(f"busmon serve -- {given}: a page shows a dashboard; {given} prints and exits (run "
                         f"busmon {given} instead)")
    if command in ("play", "replay") and "--headless" in args:
        raise ServeError(f"busmon serve -- {command} --headless: a page shows the dashboard; leave out --headless")
    return [sys.executable, "-m", "busmon", *args]


def shown(args: list[str]) -> str:
    """The command as it may be shown: URLs' passwords masked (``--url URL`` and ``--url=URL``),
    known secrets scrubbed."""
    def masked(arg: str) -> str:
        option, eq, value = arg.partition("=")
        if eq and option.startswith("--") and "://" in value:
            return f"{option}={redact_url(value)}"
        return redact_url(arg) if "://" in arg else arg
    return scrub(" ".join(masked(a) for a in ["busmon", *args]))


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here (a clear line when the port is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ServeError(f"--port {port}: cannot listen on {url_host(host)}:{port}: {listen_failure(exc)}") from None
    return sock


def serve(args: list[str], host: str, port: int, public: bool, say: Any) -> None:
    """Serve the dashboard of ``busmon ARGS`` until Ctrl-C or SIGTERM."""
    try:
        from aiohttp import web
        from textual_serve.server import Server
    except ImportError:
        raise ServeError(f"busmon serve needs textual-serve, busmon's serve extra: {EXTRA}") from None
    argv = served_command(args)
    host = check_host("--host", host, public, "--public")
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    wildcard = host in ("0.0.0.0", "::")
    title = shown(args)

    class BusmonServer(Server):
        """textual-serve's server on busmon's socket, its title and start-up line masked."""

        async def on_startup(self, app: web.Application) -> None:
            say(f"busmon: serving {title} on http://{url_host(host)}:{bound_port}  (Ctrl-C to stop)")

        async def handle_index(self, request: web.Request) -> Any:
            if wildcard:  # the page's websocket goes back to whichever address the browser used
                self.public_url = f"{request.scheme}://{request.host}"
            return await super().handle_index(request)

        async def _make_app(self) -> web.Application:
            """textual-serve's app, with its pages closed first at shutdown: each page's busmon is
            told to quit (its bus closed, its report written) and awaited, rather than aiohttp
            waiting up to a minute for page connections that never end by themselves."""
            app = await super()._make_app()
            pages: set[asyncio.Task] = set()

            @web.middleware
            async def track_pages(request: web.Request, handler: Any) -> Any:
                if request.path != "/ws" or (task := asyncio.current_task()) is None:
                    return await handler(request)
                pages.add(task)
                try:
                    return await handler(request)
                finally:
                    pages.discard(task)

            async def close_pages(app: web.Application) -> None:
                for task in list(pages):
                    task.cancel()  # textual-serve's handler then stops its busmon and awaits it
                if pages:
                    await asyncio.wait(list(pages), timeout=CLOSE_PAGES_S)

            app.middlewares.append(track_pages)
            app.on_shutdown.append(close_pages)
            return app

        def serve(self, debug: bool = False) -> None:
            self.debug = debug
            self.initialize_logging()
            loop = asyncio.new_event_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self.request_exit)
            web.run_app(self._make_app(), sock=sock, handle_signals=False, loop=loop, print=None)

    if (warning := public_warning(host, bound_port)) is not None:
        say(warning)
    server = BusmonServer(shlex.join(argv), host=host, port=bound_port, title=title)
    server.serve()


def public_warning(host: str, port: int) -> str | None:
    """What ``--public`` on an address others reach must say (None on loopback)."""
    if is_loopback(host):
        return None
    return (f"busmon: warning: {url_host(host)}:{port} is reachable from other machines and the page has no "
            "login: whoever opens it runs and drives busmon as you")
