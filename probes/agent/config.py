"""What ``busmon run`` asks of the agent in the program, carried in one environment variable.

The parent writes it, the agent reads it before the program's first line and removes it, so
the program's own child processes run without an agent. A value the agent cannot read is
said in one line by the parent (the agent reports it over the channel), never a traceback.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

from busmon.probes.watching.watch_options import DEFAULT_STALL_MS

#: the variable that carries the configuration (its presence is what starts the agent)
ENV = "BUSMON_AGENT"


class AgentConfigError(ValueError):
    """The configuration is not one this agent reads: one line."""


@dataclass(frozen=True)
class AgentConfig:
    channel_fd: int                          # where the agent writes its events (a pipe to busmon run)
    label: str = "the program"               # how the program is named in verdicts (``app.py``)
    baseline_at: str | None = None           # a mark's name: the baseline is taken then (None: when
    #                                          the main coroutine starts, before any of its code runs)
    baseline_after_s: float | None = None    # … or this long after the main coroutine started
    verdict_at: str | None = None            # judge at this mark instead of at shutdown
    settle_timeout_s: float = 5.0            # how long leftovers are waited for, at most
    stall_ms: int = DEFAULT_STALL_MS         # the loop blocked this long is a stall (0: not watched)
    trace_creation: bool = True              # where tasks were created, threads started
    ignore_tasks: tuple[str, ...] = ()
    ignore_threads: tuple[str, ...] = ()
    retained: bool = False                   # the objects created since the baseline, still alive at
    #                                          the verdict, by type (the baseline frozen till then)
    listen: bool = False                     # serve busmon attach on a socket (busmon run --listen)
    listen_buffer: int = 4 * 2**20           # bytes held for a dashboard that does not keep up
    metrics_host: str | None = None          # serve Prometheus metrics here (busmon run --metrics;
    metrics_port: int | None = None          # the address checked by busmon run: loopback unless public)
    metrics_top: int = 20                    # components named in busmon_tasks (the rest: other)
    metrics_linger_s: float = 0.0            # at exit, wait this long at most for a scrape of the last verdict
    pythonpath: str | None = None            # the program's own PYTHONPATH, put back at once
    sys_path: tuple[str, ...] = field(default=())  # where busmon is, if the program's Python lacks it

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> AgentConfig:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise AgentConfigError(f"{ENV}: expected JSON, got {text[:40]!r} ({exc})") from None
        if not isinstance(data, dict):
            raise AgentConfigError(f"{ENV}: expected a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise AgentConfigError(f"{ENV}: unknown field {unknown[0]!r} (busmon run and the agent differ in version?)")
        if not isinstance(data.get("channel_fd"), int):
            raise AgentConfigError(f"{ENV}: channel_fd: expected a file descriptor number")
        for name in ("ignore_tasks", "ignore_threads", "sys_path"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)


def take_from_environment() -> AgentConfig | None:
    """The configuration, removed from the environment with PYTHONPATH put back as it was (None:
    the program runs without busmon)."""
    text = os.environ.pop(ENV, None)
    if text is None:
        return None
    config = AgentConfig.from_env(text)
    if config.pythonpath is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = config.pythonpath
    return config
