"""What a watch judges and how long it waits: one set of options, checked once.

The same options reach busmon's verdict from three places (``watch(...)`` keywords, the
``@pytest.mark.busmon(...)`` marker and the ``busmon_*`` ini options), so they are checked in
one place and every mistake is one line naming the option and what was expected.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Mapping

#: every kind of leftover a watch can judge
KINDS = ("tasks", "threads", "timers", "sockets", "fds", "processes")
#: how long a watch waits, by default, for what the code started to exit. Shorter than a
#: scenario's 5 s: a test suite pays it on every leaking test, and a clean test never waits
DEFAULT_SETTLE_S = 2.0
ON_LEAK = ("warn", "raise", "ignore")
#: a watched event loop that runs nothing for this long is a stall, told in the verdict.
#: Longer than ``busmon play``'s 100 ms: a test suite runs on shared CI machines, where a
#: healthy test's one-off work (an import, ``ssl.create_default_context()`` at 50-140 ms here,
#: measured in httpx's suite) can take 100 ms, and a suite-wide tool must not cry wolf;
#: a blocking call in a coroutine (``time.sleep(0.3)``, a sync HTTP call) is still caught.
#: ``stall_ms`` lowers it (``busmon_stall_ms = 100`` is play's)
DEFAULT_STALL_MS = 250
#: the smallest threshold the watchdog takes (its heartbeat runs at least twice a threshold)
MIN_STALL_MS = 2


class WatchOptionError(ValueError):
    """An option with the wrong name or value: the message is one line, ready to show."""


@dataclass(frozen=True)
class WatchOptions:
    settle_timeout_s: float = DEFAULT_SETTLE_S   # wait this long for leftovers to exit
    poll_ms: int = 10                            # how often threads, sockets, processes are looked at
    ignore_tasks: tuple[str, ...] = ()           # coroutine qualname or task name patterns (fnmatch)
    ignore_threads: tuple[str, ...] = ()         # thread name patterns
    ignore_sockets: tuple[str, ...] = ()         # peer/local address, a bare port, or the label
    ignore_processes: tuple[str, ...] = ()       # child command line patterns
    judge: tuple[str, ...] = KINDS               # the kinds of leftover judged (the rest: not looked at)
    trace_creation: bool = False                 # record where tasks were created, threads started (costs per task)
    on_leak: str = "warn"                        # watch(): warn | raise | ignore
    stall_ms: int = DEFAULT_STALL_MS             # the loop blocked this long is a stall, told (0: not watched)
    fail_on_stall_ms: float | None = None        # a stall at least this long fails (None: stalls only warn)

    def watchdog_ms(self) -> int | None:
        """The threshold the loop's watchdog runs at, or None when it is not started: a stall
        that would fail must be seen, however short, so the smaller of the two limits
        (``fail_on_stall_ms = 0`` fails on every stall told, so it adds no limit of its own)."""
        limits = [x for x in (self.stall_ms, self.fail_on_stall_ms) if x]
        if not limits:
            if self.fail_on_stall_ms is None:
                return None
            limits = [DEFAULT_STALL_MS]
        return max(MIN_STALL_MS, math.ceil(min(limits)))

    def merged(self, changes: Mapping[str, Any], where: str = "", prefix: str = "",
               also: tuple[str, ...] = ()) -> WatchOptions:
        """These options with ``changes`` applied (checked); ignore lists are extended, not
        replaced, so a marker adds to the ini file's rules. ``also``: other names the caller
        accepts (said in the message for an unknown one)."""
        checked = check_options(changes, where, prefix, also)
        for name in ("ignore_tasks", "ignore_threads", "ignore_sockets", "ignore_processes"):
            if name in checked:
                checked[name] = tuple(dict.fromkeys((*getattr(self, name), *checked[name])))
        return replace(self, **checked)


OPTION_NAMES = tuple(f.name for f in fields(WatchOptions))


def _where(where: str) -> str:
    return f"{where}: " if where else ""


def check_options(values: Mapping[str, Any], where: str = "", prefix: str = "",
                  also: tuple[str, ...] = ()) -> dict[str, Any]:
    """``values`` converted to the types of :class:`WatchOptions`; a wrong one raises
    :class:`WatchOptionError` naming ``where``, the option (as the user wrote it: ``prefix`` +
    name, ``busmon_judge`` in an ini file) and what it should be."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in OPTION_NAMES:
            known = OPTION_NAMES + also
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (options: {', '.join(known)})"
            raise WatchOptionError(f"{_where(where)}unknown option {name!r}{hint}")
        out[name] = _convert(name, value, where, prefix + name)
    return out


def _convert(name: str, value: Any, where: str, shown: str) -> Any:
    def wrong(expected: str) -> WatchOptionError:
        return WatchOptionError(f"{_where(where)}{shown}: expected {expected}, got {value!r}")

    if name == "settle_timeout_s":
        number = _number(value)
        if number is None or number < 0 or not math.isfinite(number):
            raise wrong("a number of seconds ≥ 0")
        return number
    if name == "poll_ms":
        number = _number(value)
        if number is None or not math.isfinite(number) or number < 1 or number != int(number):
            raise wrong("a whole number of milliseconds ≥ 1")
        return int(number)
    if name == "stall_ms":
        number = _number(value)
        if (number is None or not math.isfinite(number) or number != int(number)
                or not (number == 0 or number >= MIN_STALL_MS)):
            raise wrong(f"a whole number of milliseconds ≥ {MIN_STALL_MS}, or 0 to not watch the event loop")
        return int(number)
    if name == "fail_on_stall_ms":
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        number = _number(value)
        if number is None or number < 0 or not math.isfinite(number):
            raise wrong("a number of milliseconds ≥ 0, or none to only warn of stalls")
        return number
    if name == "trace_creation":
        if (given := flag(value)) is None:
            raise wrong("true or false")
        return given
    if name == "on_leak":
        if value not in ON_LEAK:
            raise wrong(" | ".join(repr(x) for x in ON_LEAK))
        return value
    if name == "judge":  # "tasks threads", "tasks, threads", ["tasks", "threads"]
        items = [value] if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and all(isinstance(x, str) for x in items):
            value = [kind for x in items for kind in x.replace(",", " ").split()]
    patterns = _strings(value)
    if patterns is None:
        raise wrong("a pattern or a list of patterns" if name.startswith("ignore") else
                    f"a list of kinds out of {', '.join(KINDS)}")
    if name == "judge":
        if "all" in patterns:
            return KINDS
        unknown = [p for p in patterns if p not in KINDS]
        if unknown:
            close = difflib.get_close_matches(unknown[0], KINDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise WatchOptionError(f"{_where(where)}{shown}: unknown kind {unknown[0]!r}{hint}; "
                                   f"expected some of {', '.join(KINDS)}")
        return tuple(k for k in KINDS if k in patterns)
    return patterns


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def flag(value: Any) -> bool | None:
    """True/False, or the words an ini file or a marker would use for them; None otherwise."""
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        return {"true": True, "yes": True, "1": True, "on": True,
                "false": False, "no": False, "0": False, "off": False}.get(value.strip().lower())
    return None


def _strings(value: Any) -> tuple[str, ...] | None:
    """A pattern or an iterable of patterns (an ini line list, a marker's list or tuple)."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        items = list(value)
        if all(isinstance(x, str) for x in items):
            return tuple(x for x in items if x)
    return None
