"""The metrics' HTTP server: one thread of busmon's, one request at a time.

``prometheus_client``'s own ``start_http_server`` starts a thread per request. Inside a program
that busmon judges, each would be a thread the program did not start, alive for a moment and
counted in its live figures; a scrape a second needs no concurrency. So: ``wsgiref``'s plain
server with ``prometheus_client``'s WSGI app (content negotiation, gzip, ``name[]`` filters),
in one daemon thread named ``busmon.metrics``, started before the baseline. Each scrape's
connection is busmon's own descriptor while it is open (never a socket of the program's), and
a client that stalls is dropped after a timeout. Exiting can wait for Prometheus to scrape
the last verdict (``--metrics-linger``), on a condition, with a deadline.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from typing import Any, Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from busmon.probes.metrics.address import listen_failure, url_host
from busmon.probes.metrics.feed import MetricsFeed
from busmon.probes.observe.fds import BUSMON_FDS

THREAD_NAME = "busmon.metrics"
#: a scrape's connection that sends nothing for this long is dropped
CLIENT_TIMEOUT_S = 10.0
#: the pip extra that brings prometheus_client
EXTRA = "in busmon's folder, pip install -e '.[metrics]'"


class MetricsUnavailable(RuntimeError):
    """Metrics cannot be served as asked: one line (the port is taken, the extra is missing)."""


def require_client() -> None:
    """prometheus_client is an optional extra: say how to get it, in one line."""
    try:
        found = importlib.util.find_spec("prometheus_client") is not None
    except ValueError:  # sys.modules holds None for it: imports of it are blocked
        found = False
    if not found:
        raise MetricsUnavailable(f"--metrics needs prometheus_client, busmon's metrics extra: {EXTRA}")


class _Handler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """Scrapes are not logged (a line a second on the program's stderr)."""


class _Server(WSGIServer):
    def server_bind(self) -> None:
        # no reverse lookup of the host name (HTTPServer.server_bind does one: slow offline)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        BUSMON_FDS.add(request.fileno())  # a scrape's connection: busmon's, never the program's socket
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        try:
            BUSMON_FDS.discard(request.fileno())
        except OSError:
            pass
        super().shutdown_request(request)


class MetricsServer:
    """Serves ``feed`` through ``collector`` on ``host:port`` until :meth:`close`."""

    def __init__(self, feed: MetricsFeed, collector: Any, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app

        self.feed = feed
        registry = CollectorRegistry(auto_describe=False)  # busmon's own, never the program's global one
        registry.register(collector)
        self._app = make_wsgi_app(registry)
        self._served = threading.Condition()
        self._served_generation = -1
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("BusmonMetricsServer", (_Server,), {"address_family": family})
        try:
            self._httpd = server_class((host, port), _Handler)
        except OSError as exc:
            raise MetricsUnavailable(f"--metrics {url_host(host)}:{port}: cannot listen there: "
                                     f"{listen_failure(exc)}") from None
        self._httpd.set_app(self._app_noting_scrapes)
        self.host, self.port = host, int(self._httpd.server_address[1])
        self._listening_fd = self._httpd.socket.fileno()
        BUSMON_FDS.add(self._listening_fd)  # busmon's, never the program's socket
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name=THREAD_NAME, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}/metrics"

    def _app_noting_scrapes(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        generation = self.feed.generation  # the scrape reads the feed after this: it holds at least this
        body = self._app(environ, start_response)
        if environ.get("PATH_INFO") == "/favicon.ico":
            return body
        with self._served:
            self._served_generation = max(self._served_generation, generation)
            self._served.notify_all()
        return body

    def wait_scraped(self, timeout_s: float) -> bool:
        """Wait until a scrape has read every verdict so far (True), or ``timeout_s`` passed."""
        want = self.feed.generation
        deadline = time.monotonic() + timeout_s
        with self._served:
            while self._served_generation < want:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._served.wait(left)
        return True

    def forget_in_child(self) -> None:
        """A forked child: let go of the listening socket (the thread was not copied)."""
        BUSMON_FDS.discard(self._listening_fd)
        try:
            self._httpd.socket.close()
        except OSError:
            pass

    def close(self) -> None:
        """Stop serving (waits for the request in progress, if any, and the poll: ≤ 0.5 s)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        BUSMON_FDS.discard(self._listening_fd)
        self._httpd.server_close()


def serve_metrics(feed: MetricsFeed, *, mode: str, host: str, port: int, top: int) -> MetricsServer:
    """Keep the process's loop totals and serve ``feed`` on ``host:port`` (raises
    :class:`MetricsUnavailable` in one line: the extra missing, the port taken)."""
    require_client()
    import busmon
    from busmon.probes.metrics.exposition import BusmonCollector
    from busmon.probes.observe import loop_totals

    loop_totals.enable()
    return MetricsServer(feed, BusmonCollector(feed, mode=mode, version=busmon.__version__, top=top), host, port)
