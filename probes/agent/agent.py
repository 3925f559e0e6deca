"""The agent: busmon inside a program it did not start itself, from before its first line.

Started by the ``sitecustomize`` that ``busmon run`` puts first on the program's path, it
hooks how the program runs its event loops (:mod:`.loop_hooks`): each loop's main coroutine
gets a :class:`~.loop_verdict.LoopVerdict` (baseline when it starts, the verdict when it
returns, before asyncio cancels what is left), marks from :mod:`busmon.agent` become phases,
and every event goes to ``busmon run`` over the channel. Between marks, the only thing of
busmon's on the program's loop is the loop watchdog's heartbeat (a timer every 20 ms, which is
how stalls are seen); no task, and no sampling unless a dashboard is attached
(``--baseline-after`` sets one timer, before the baseline).
A fault of the agent's is told over the channel and never changes what the program does.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import os
import platform
import sys
import threading
import time
from typing import Any, Coroutine

import busmon
import busmon.agent as marks
from busmon.probes.agent.channel import Channel
from busmon.probes.agent.config import AgentConfig
from busmon.probes.agent.listener import Listener
from busmon.probes.agent.loop_verdict import LoopVerdict, loop_name
from busmon.probes.agent.socket_dir import remove_stale, socket_path
from busmon.probes.metrics.feed import MetricsFeed
from busmon.probes.model import PhaseStarted, RunFinished, Sample
from busmon.probes.observe.fds import BUSMON_FDS, fd_table
from busmon.probes.observe.process import ProcessProbe, ProcessReading
from busmon.probes.observe.census import running_loop


class Agent:
    """One per process: the channel, the loops being watched, and the marks' receiver."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.channel = Channel(config.channel_fd)
        self.listener: Listener | None = None
        self.process = ProcessProbe()  # the attached dashboard's process figures
        #: the verdicts so far (for a dashboard attaching later), the last few
        self.results: collections.deque[RunFinished] = collections.deque(maxlen=10)
        self.loops: dict[asyncio.AbstractEventLoop, LoopVerdict] = {}
        self.loops_seen = 0
        self._lock = threading.Lock()
        self._finished = False
        self.forked = False
        self.metrics: Any = None                # the MetricsServer (busmon run --metrics)
        self.metrics_feed: MetricsFeed | None = None

    def start(self) -> None:
        """Listen, say hello, hook the loops. Metrics asked for and not servable (the port taken,
        prometheus_client missing) raise :class:`MetricsUnavailable`: the program does not run."""
        from busmon.probes.agent import loop_hooks

        metrics = ""
        if self.config.metrics_port is not None:
            from busmon.probes.metrics.server import serve_metrics

            self.metrics_feed = MetricsFeed(refresh=self.fresh_samples)
            self.metrics = serve_metrics(self.metrics_feed, mode="run", host=self.config.metrics_host or "127.0.0.1",
                                         port=self.config.metrics_port, top=self.config.metrics_top)
            metrics = self.metrics.url
        listening = ""
        if self.config.listen:
            try:
                path = socket_path(os.getpid())
                remove_stale(path.parent)
                self.listener = Listener(self, path, max_buffer=self.config.listen_buffer)
                listening = str(path)
            except OSError as exc:  # the program runs on, only not attachable: said in one line
                self.channel.note(f"not listening for busmon attach: {exc}")
        self.channel.hello(**self.facts(), listening=listening, metrics=metrics)
        loop_hooks.install(self)
        marks._sink = self.mark
        atexit.register(self.finish)
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """A child forked by the program (multiprocessing, os.fork) is not the program busmon
        watches: its agent goes quiet (no baseline, no events, nothing at its exit) and lets go
        of its copies of the pipe and the socket."""
        self.forked = True
        marks._sink = None
        self.loops.clear()
        BUSMON_FDS.discard(self.channel.fd)
        try:
            os.close(self.channel.fd)
        except OSError:
            pass
        if self.listener is not None:
            self.listener.forget_in_child()
        if self.metrics is not None:
            self.metrics.forget_in_child()
            self.metrics = self.metrics_feed = None

    def facts(self) -> dict[str, Any]:
        """Who this agent is: for ``busmon run`` and for an attaching dashboard."""
        return {"pid": os.getpid(), "python": platform.python_version(), "argv": list(sys.argv),
                "busmon": busmon.__version__, "label": self.config.label, "settle_timeout_s": self.config.settle_timeout_s,
                "stall_ms": self.config.stall_ms}

    def emit(self, event: Any) -> None:
        """An event to ``busmon run`` and, if one is attached, to the dashboard."""
        if self.forked:
            return
        if isinstance(event, RunFinished):
            self.results.append(event)
            if self.metrics_feed is not None:
                self.metrics_feed.put(event)
        self.channel.put(event)
        if self.listener is not None:
            self.listener.put(event)

    def history(self) -> list[Any]:
        """What an attaching dashboard is told first: each loop's phases so far, the verdicts."""
        out: list[Any] = []
        for lv in list(self.loops.values()):
            snaps = list(lv.phases)
            for snap in snaps:
                out += [PhaseStarted(lv.name, snap.phase, snap.t_s), snap]
            if snaps and lv.phase != snaps[-1].phase:  # a phase under way (opened, not yet ended)
                out.append(PhaseStarted(lv.name, lv.phase, lv.elapsed()))
        return out + list(self.results)

    # -- an attached dashboard's requests (from the listener's thread) ---------------------------

    def _each_loop(self, what: Any) -> int:
        """``what(lv)`` called on each watched loop, in its own thread: how many loops were asked."""
        asked = 0
        for loop, lv in list(self.loops.items()):
            try:
                loop.call_soon_threadsafe(what, lv)
                asked += 1
            except RuntimeError:  # closed meanwhile
                pass
        return asked

    def sample_all(self) -> None:
        """One sample of each loop for the dashboard (from the listener's thread): the process's
        figures read here, off the program's loop; the task counts on each loop."""
        proc = self.process.read()
        table = fd_table()

        def sample(lv: LoopVerdict) -> None:
            if (s := lv.sample(proc, lv.sockets_since_baseline(table))) is not None and self.listener is not None:
                self.listener.put(s)
        self._each_loop(sample)

    def fresh_samples(self, timeout_s: float) -> list[Sample]:
        """Each loop's task counts now, for a scrape (from the metrics thread): asked of each
        loop, waited for at most ``timeout_s``; a loop that does not answer (blocked) is left
        out, and the scrape keeps its last sample."""
        nothing = ProcessReading(0.0, 0.0, 0, 0)  # the process's figures are read by the scrape itself
        done = threading.Condition()
        got: list[Sample] = []
        answered = 0

        def sample(lv: LoopVerdict) -> None:
            nonlocal answered
            s = lv.sample(nothing, 0)
            with done:
                if s is not None:
                    got.append(s)
                answered += 1
                done.notify()

        asked = self._each_loop(sample)
        deadline = time.monotonic() + timeout_s
        with done:
            while answered < asked and (left := deadline - time.monotonic()) > 0:
                done.wait(left)
            return list(got)

    def baseline_all(self) -> None:
        self._each_loop(lambda lv: lv.attached_baseline())

    def verdict_all(self) -> None:
        def judge(lv: LoopVerdict) -> None:
            census = lv.census_now()  # what is alive as the dashboard asks
            lv.own.add(lv.loop.create_task(lv.judge_attached(census), name="busmon.agent.verdict"))
        self._each_loop(judge)

    # -- loops -----------------------------------------------------------------------------

    def watching(self, loop: asyncio.AbstractEventLoop) -> bool:
        return loop in self.loops

    def begin(self, loop: asyncio.AbstractEventLoop, main: object = None) -> LoopVerdict | None:
        """A loop's main work starts (in its thread): its baseline. None if the agent failed
        (said over the channel): the program runs on unwatched. ``main``: the program's main
        coroutine, when the agent runs it (its task is the program's, not busmon's)."""
        if self.forked:
            return None
        lv = LoopVerdict(self.config, loop, loop_name(self.config.label), self.emit)
        if self.listener is not None:
            lv.to_dashboard = self.listener.put
        if main is not None:
            lv.set_main(asyncio.current_task(loop), main)
        with self._lock:
            self.loops[loop] = lv
            self.loops_seen += 1
        try:
            lv.begin()
        except Exception as exc:  # busmon's fault, never the program's
            self.fault(f"taking the baseline of {lv.name}", exc)
            self.end(loop)
            return None
        return lv

    def end(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            lv = self.loops.pop(loop, None)
        if lv is None:
            return
        if lv.watch is not None:
            lv.watch.stop()  # idempotent: a verdict that kept watching (metrics) leaves it on till here
        if self.metrics_feed is not None:
            self.metrics_feed.forget_loop(lv.name)  # its tasks are no longer live ones

    async def judge(self, loop: asyncio.AbstractEventLoop, *, interrupted: bool = False) -> None:
        """The loop's main work is over: the verdict (or the one asked for at a mark, awaited)."""
        lv = self.loops.get(loop)
        if lv is None:
            return
        try:
            if lv.verdict_task is not None and not lv.verdict_task.done():
                # the program is ending while the verdict asked for at a mark still waits: what
                # is there now is what it left; judge it at once rather than hold the program
                lv.cut_short("the program ended while busmon waited for leftovers: judged then")
                await asyncio.wait([lv.verdict_task])
            await lv.judge(interrupted=interrupted)
        except Exception as exc:
            self.fault(f"judging {lv.name}", exc)
        finally:
            self.end(loop)

    async def main(self, coro: Coroutine[Any, Any, Any], interrupted: Any) -> Any:
        """The program's main coroutine, watched: baseline first, verdict when it returns (or
        raises, or Ctrl-C cancels it: ``interrupted()`` says which), before its loop cancels
        what is left. Its value or exception is the program's, untouched."""
        loop = asyncio.get_running_loop()
        if self.begin(loop, coro) is None:
            return await coro
        cancelled = False
        try:
            return await coro
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if not cancelled or interrupted():
                # a Ctrl-C while busmon waits only cuts the waiting short: the program had returned
                await self._judge_through_ctrl_c(loop, cancelled)
            else:
                self.end(loop)

    async def _judge_through_ctrl_c(self, loop: asyncio.AbstractEventLoop, cancelled: bool) -> bool:
        """The verdict, in a task of busmon's; a Ctrl-C meanwhile (asyncio.run() cancels this,
        the main task) stops the waiting for leftovers, never the verdict. True if one came."""
        lv = self.loops.get(loop)
        judging = loop.create_task(self.judge(loop, interrupted=cancelled), name="busmon.agent.verdict")
        if lv is not None:
            lv.own.add(judging)
        pressed = False
        while not judging.done():
            try:
                await asyncio.shield(judging)
            except asyncio.CancelledError:
                pressed = True
                if lv is not None:
                    lv.cut_short()
        return pressed

    # -- marks -----------------------------------------------------------------------------

    def mark(self, name: str, opens: bool | None) -> None:
        """From :mod:`busmon.agent`, in any thread: to the loop running here, else to each."""
        try:
            here = running_loop()
            lv = self.loops.get(here) if here is not None else None
            if lv is not None:
                lv.mark(name, opens)
                return
            for loop, other in list(self.loops.items()):
                loop.call_soon_threadsafe(other.mark, name, opens)
        except Exception as exc:
            self.fault(f"the mark {name!r}", exc)

    # -- the end ---------------------------------------------------------------------------

    def fault(self, doing: str, exc: BaseException) -> None:
        self.channel.error(f"busmon's agent failed {doing}: {type(exc).__name__}: {exc}")

    def finish(self) -> None:
        """At the interpreter's exit: say what was never judged, and close the channel."""
        if self._finished or self.forked:
            return
        self._finished = True
        from busmon.probes.agent.loop_hooks import judge_unclosed

        try:
            judge_unclosed(self)
        except Exception as exc:
            self.fault("judging a loop the program never closed", exc)
        marks._sink = None
        if self.loops_seen == 0:
            self.channel.note("the program never ran an asyncio event loop: no task was judged")
        if self.listener is not None:
            self.listener.close()
        self._linger_for_scrape()
        self.channel.close()

    def _linger_for_scrape(self) -> None:
        """``--metrics-linger``: the last verdict is worth a scrape before the process is gone."""
        server, feed = self.metrics, self.metrics_feed
        if server is None or feed is None:
            return
        linger = self.config.metrics_linger_s
        try:
            if feed.generation == 0:  # no verdict to be scraped
                return
            if linger > 0:
                self.channel.note(f"metrics: waiting up to {linger:g} s for a scrape of the last verdict "
                                  f"({server.url}; --metrics-linger)")
                if server.wait_scraped(linger):
                    self.channel.note("metrics: the last verdict was scraped")
                else:
                    self.channel.note(f"metrics: nothing scraped {server.url} within {linger:g} s of the last "
                                      "verdict")
            elif not server.wait_scraped(0):
                self.channel.note("metrics: the last verdict was never scraped (--metrics-linger SECONDS waits "
                                  "for a scrape before the program exits)")
        except KeyboardInterrupt:  # a second Ctrl-C: the person does not want to wait
            self.channel.note("metrics: stopped waiting for a scrape (Ctrl-C)")
        finally:
            server.close()

