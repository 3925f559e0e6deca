"""busmon's metrics as Prometheus metric families, made at each scrape (``prometheus_client``).

A custom collector rather than gauges set on every sample: nothing is computed between
scrapes, and a scrape reads one consistent copy of the feed plus the process as it is now.
The component label is bounded: the ``top`` components by task count keep their name and
the rest add up to ``other``, so a service that names a task per request cannot grow the
series count without bound. Every metric is listed in the README (name, type, labels).
"""

from __future__ import annotations

import os
import threading
from typing import Iterator, Mapping

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from busmon.probes.metrics.feed import DEFAULT_TOP, ERROR_KINDS, FeedReading, MetricsFeed
from busmon.probes.observe import loop_totals
from busmon.probes.observe.children import descendant_count
from busmon.probes.observe.components import thread_component
from busmon.probes.observe.fds import BUSMON_FDS, fd_table

#: the verdicts a run or a program can have (an enum: the last one is 1, the others 0)
VERDICTS = ("clean", "leaked", "failed", "interrupted")
#: the kinds of leftover a verdict judges: each has a leaked series (0 when clean), so a graph
#: of leaks has a line to draw from the first verdict on
LEFTOVER_KINDS = ("task", "thread", "timer", "socket", "fd", "process")
#: the component label's value for the tasks of every component outside the top N
OTHER = "other"


def top_components(counts: Mapping[str, int], top: int) -> dict[str, int]:
    """The ``top`` components by count (ties by name), the rest summed as ``other``."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    out = dict(ranked[:top])
    rest = sum(n for _, n in ranked[top:])
    if rest or OTHER in out:
        out[OTHER] = out.get(OTHER, 0) + rest
    return out


class BusmonCollector(Collector):
    """Collects busmon's metrics from a :class:`MetricsFeed` and the process."""

    def __init__(self, feed: MetricsFeed, *, mode: str, version: str, top: int = DEFAULT_TOP) -> None:
        self.feed = feed
        self.mode = mode          # "run" (the agent in a program) or "play"
        self.version = version
        self.top = top
        self._proc = psutil.Process(os.getpid())

    def collect(self) -> Iterator[Metric]:
        reading = self.feed.read()
        info = GaugeMetricFamily("busmon_info", "busmon serving these metrics: its version, and run (a "
                                 "program under busmon run) or play (a scenario)", labels=["version", "mode"])
        info.add_metric([self.version, self.mode], 1)
        yield info

        tasks = GaugeMetricFamily("busmon_tasks", f"Live asyncio tasks by component (the top {self.top} by "
                                  "count; the rest as other)", labels=["component"])
        counts = reading.tasks_by_component
        if self.mode == "run":  # a program's tasks: busmon's own (a verdict under way) left out
            counts = {c: n for c, n in counts.items() if not c.startswith("busmon.")}
        for component, n in top_components(counts, self.top).items():
            tasks.add_metric([component], n)
        yield tasks
        yield from self._process()
        yield from self._loop()
        if self.mode == "play":
            yield CounterMetricFamily("busmon_published", "Envelopes published by the runs played",
                                      value=reading.published)
            yield CounterMetricFamily("busmon_delivered", "Deliveries received by the runs' subscribers",
                                      value=reading.delivered)
            errors = CounterMetricFamily("busmon_errors", "The bus's errors by kind: a handler raised, an "
                                         "envelope would not decode, a publish failed", labels=["kind"])
            for kind in ERROR_KINDS:
                errors.add_metric([kind], reading.errors.get(kind, 0))
            yield errors
        yield from self._verdicts(reading)

    def _process(self) -> Iterator[Metric]:
        p = self._proc
        try:
            with p.oneshot():
                rss, os_threads = p.memory_info().rss, p.num_threads()
        except psutil.Error:
            rss = os_threads = 0
        # busmon's own descriptors (the metrics listener, a scrape's connection, an attached
        # dashboard's) are left out: the gauges say what the program holds
        table = {fd: t for fd, t in (fd_table() or {}).items() if fd not in BUSMON_FDS}
        threads = threading.enumerate()
        own = sum(1 for t in threads if thread_component(t).startswith("busmon."))  # busmon's machinery
        yield GaugeMetricFamily("busmon_threads", "Live Python threads (busmon's own left out)",
                                value=len(threads) - own)
        yield GaugeMetricFamily("busmon_os_threads", "The process's OS threads, Python's and native (busmon's own "
                                "left out)", value=max(0, os_threads - own))
        yield GaugeMetricFamily("busmon_open_fds", "The process's open file descriptors (busmon's own left out)",
                                value=len(table))
        yield GaugeMetricFamily("busmon_sockets", "The process's open sockets (busmon's own left out)",
                                value=sum(1 for t in table.values() if t.startswith("socket:")))
        yield GaugeMetricFamily("busmon_child_processes", "The process's live descendants", value=descendant_count())
        yield GaugeMetricFamily("busmon_rss_bytes", "The process's resident memory", value=rss)

    def _loop(self) -> Iterator[Metric]:
        totals = loop_totals.current()
        if totals is None:
            return
        t = totals.read()
        cumulative, buckets = 0, []
        for bound, n in zip((*loop_totals.LAG_BOUNDS_S, float("inf")), t.buckets):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily("busmon_loop_lag_seconds", "How late the event loop ran busmon's 20 ms "
                                    "heartbeat (every watched loop)", buckets=buckets, sum_value=t.sum_s)
        yield CounterMetricFamily("busmon_loop_stalls", "Times a watched loop was blocked for at least the "
                                  "stall threshold", value=t.stalls)

    def _verdicts(self, reading: FeedReading) -> Iterator[Metric]:
        total = CounterMetricFamily("busmon_verdicts", "Verdicts so far, by verdict", labels=["verdict"])
        for v in sorted({*VERDICTS, *reading.verdicts}):
            total.add_metric([v], reading.verdicts.get(v, 0))
        yield total
        last = reading.last
        if last is None:
            return  # no verdict yet: no verdict gauges (an alert on them stays quiet, not wrong)
        state = GaugeMetricFamily("busmon_last_verdict", "The last verdict: 1 for it, 0 for the others",
                                  labels=["verdict"])
        for v in sorted({*VERDICTS, last.verdict}):
            state.add_metric([v], 1 if v == last.verdict else 0)
        yield state
        yield GaugeMetricFamily("busmon_last_verdict_timestamp_seconds", "When the last verdict was reached "
                                "(Unix time)", value=last.at)
        left = GaugeMetricFamily("busmon_leftovers", "What the last verdict found alive that the baseline "
                                 "lacked, by kind (task, thread, timer, socket, fd, process) and state (leaked, "
                                 "exited, destroyed, ignored, unknown)", labels=["kind", "state"])
        counts = {**{(kind, "leaked"): 0 for kind in LEFTOVER_KINDS}, **last.leftovers}
        for (kind, st), n in sorted(counts.items()):
            left.add_metric([kind, st], n)
        yield left
