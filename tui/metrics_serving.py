"""``--metrics`` on the command line: its options, and serving them for ``busmon play``.

``busmon play`` serves in its own process, fed every arena event as ``--record`` is.
``busmon run`` checks the address and the extra here, then the agent inside the program
serves (it binds there: a port in use stops the program before its first line, exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Optional

import typer

from busmon.probes.metrics.address import parse_listen
from busmon.probes.metrics.feed import DEFAULT_TOP, MetricsFeed
from busmon.probes.metrics.server import MetricsServer, require_client, serve_metrics

MetricsOpt = Annotated[Optional[str], typer.Option(
    "--metrics", metavar="[HOST:]PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics (HOST: "
                                         "127.0.0.1 unless given; needs the metrics extra: pip install -e '.\\[metrics]').")]
MetricsPublicOpt = Annotated[bool, typer.Option(
    "--metrics-public", metavar="", help="Let --metrics listen on an address other machines can reach "
                                         "(the metrics have no login).")]
MetricsTopOpt = Annotated[int, typer.Option(
    "--metrics-components", metavar="N", min=1, help="busmon_tasks names the N components with the most tasks; "
                                                      "the rest count as other.")]
MetricsLingerOpt = Annotated[float, typer.Option(
    "--metrics-linger", metavar="SECONDS", min=0.0, help="Before exiting, wait up to this long for Prometheus "
                                                          "to scrape the last verdict.")]


class MetricsOptionError(ValueError):
    """A ``--metrics-*`` option given without ``--metrics``: one line, rather than ignored."""


def check_options(metrics: str | None, public: bool, top: int, linger_s: float) -> None:
    """The other ``--metrics-*`` options mean nothing without ``--metrics``: said, not ignored."""
    if metrics is not None:
        return
    given = [name for name, on in (("--metrics-public", public), ("--metrics-components", top != DEFAULT_TOP),
                                   ("--metrics-linger", linger_s > 0)) if on]
    if given:
        raise MetricsOptionError(f"{', '.join(given)}: only with --metrics [HOST:]PORT, which was not given")


def agent_settings(metrics: str | None, public: bool, top: int, linger_s: float) -> dict[str, object]:
    """``busmon run``'s metrics settings for the agent, checked here first (one line each)."""
    check_options(metrics, public, top, linger_s)
    if metrics is None:
        return {}
    host, port = parse_listen("--metrics", metrics, public=public, public_flag="--metrics-public")
    require_client()
    return {"metrics_host": host, "metrics_port": port, "metrics_top": top, "metrics_linger_s": linger_s}


@dataclass
class PlayMetrics:
    """``busmon play --metrics``: the feed the arena's events go to, and its server."""

    feed: MetricsFeed
    server: MetricsServer

    def linger(self, seconds: float, say: Callable[[str], None]) -> None:
        """Wait (at most ``seconds``) for a scrape of the last verdict, then stop serving."""
        try:
            if seconds > 0 and self.feed.generation > 0:
                say(f"busmon: waiting up to {seconds:g} s for Prometheus to scrape the last verdict "
                    f"({self.server.url})")
                scraped = self.server.wait_scraped(seconds)
                say("busmon: scraped" if scraped else f"busmon: not scraped within {seconds:g} s (--metrics-linger)")
        except KeyboardInterrupt:
            say("busmon: stopped waiting for a scrape (Ctrl-C)")
        finally:
            self.server.close()


def start_for_play(metrics: str | None, public: bool, top: int = DEFAULT_TOP,
                   linger_s: float = 0.0) -> PlayMetrics | None:
    """Serve ``busmon play``'s metrics (None without ``--metrics``)."""
    check_options(metrics, public, top, linger_s)
    if metrics is None:
        return None
    host, port = parse_listen("--metrics", metrics, public=public, public_flag="--metrics-public")
    feed = MetricsFeed()
    return PlayMetrics(feed, serve_metrics(feed, mode="play", host=host, port=port, top=top))

