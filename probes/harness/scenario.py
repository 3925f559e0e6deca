"""The scenario file (TOML): what to run, checked strictly.

Unknown keys, wrong types and impossible values are errors that name the file,
the line where possible, the field and what was expected, e.g.::

    ladder.toml:14: runs[2].messages: expected an integer >= 1, got -5
"""

from __future__ import annotations

import difflib
import json
import math
import re
import reprlib
import sys
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from busmon.bus.secrets import redact_url

BUILTIN_BACKENDS = {
    "memory": "memory://",
    "kafka": "kafka://127.0.0.1:9092",
    "nats": "nats://127.0.0.1:4222",
    "nats-js": "nats+js://127.0.0.1:4222",
    # FastStream on the same brokers (pip install 'busmon[faststream]')
    "faststream-kafka": "faststream+kafka://127.0.0.1:9092",
    "faststream-nats": "faststream+nats://127.0.0.1:4222",
    "faststream-nats-js": "faststream+nats+js://127.0.0.1:4222",
    # the clients themselves, nothing in between (what a bus or a framework costs, in compare)
    "raw-kafka": "raw+kafka://127.0.0.1:9092",
    "raw-nats": "raw+nats://127.0.0.1:4222",
}
_SCHEME_OF = {"memory": "memory", "kafka": "kafka", "nats": "nats", "nats-js": "nats+js",
              "faststream-kafka": "faststream+kafka", "faststream-nats": "faststream+nats",
              "faststream-nats-js": "faststream+nats+js", "raw-kafka": "raw+kafka", "raw-nats": "raw+nats"}
#: a backend that is another's with more (JetStream is NATS): that one's [bus.<name>] applies first
_WIDER = {"nats-js": "nats", "faststream-nats-js": "faststream-nats"}


class ScenarioError(ValueError):
    """A scenario that cannot be played, with a one-line reason."""


@dataclass(frozen=True)
class SubscribeSpec:
    count: int = 1            # subscriptions per topic
    group: str | None = None  # all of a topic's subscriptions share this group
    until_s: float | None = None  # unsubscribe this long after subscribing (a deadline scope)
    #: the group's name gets the run's own suffix (``billing-3f9a2c``), so a ladder's later runs
    #: never join a group an earlier run left on the broker; False: the name as written
    group_per_run: bool = True


@dataclass(frozen=True)
class RunSpec:
    name: str
    messages: int = 1000
    keys: int = 100
    topics: int = 1
    payload_bytes: int = 256
    rate_per_s: float = 0.0   # 0 = as fast as possible
    publishers: int = 1
    hold_s: float = 0.0
    load_timeout_s: float = 60.0
    subscribe: SubscribeSpec = field(default_factory=SubscribeSpec)


@dataclass(frozen=True)
class ProbeSpec:
    interval_ms: int = 100
    settle_timeout_s: float = 5.0
    settle_poll_ms: int = 10
    ignore_tasks: tuple[str, ...] = ()
    ignore_threads: tuple[str, ...] = ()
    ignore_sockets: tuple[str, ...] = ()      # peer or local address, or the label (fnmatch)
    ignore_processes: tuple[str, ...] = ()    # child command lines (fnmatch)
    ignore_types: tuple[str, ...] = ()        # retained object types, 'module.Name' or 'Name'
    trace_creation: bool = False
    stall_ms: int = 100                       # a loop blocked this long is a stall finding
    fail_on_stall_ms: float = 0.0             # a stall this long fails the run (0: stalls never do)
    trace_memory: bool = False                # tracemalloc: where retained objects were allocated


@dataclass(frozen=True)
class DeadlineSpec:
    """How long busmon waits on each call into the bus before it fails the run (seconds).

    The load deadline is per run (``load_timeout_s``, publishing and delivery together)
    and the settle deadline is ``probes.settle_timeout_s``.
    """

    start_s: float = 30.0       # bus.start(): connect (a bus's own connect timeout is usually shorter)
    subscribe_s: float = 120.0  # every subscription of the run together (a Kafka group join is ~5 s)
    close_s: float = 30.0       # bus.close(), including its drain


@dataclass(frozen=True)
class Scenario:
    name: str
    backend: str                      # memory | kafka | nats | nats-js | package.module:factory
    url: str                          # what create_bus gets: a URL, or the import path
    bus_options: dict[str, Any]
    probes: ProbeSpec
    runs: tuple[RunSpec, ...]
    path: str = "<scenario>"
    deadlines: DeadlineSpec = field(default_factory=DeadlineSpec)
    #: the line of each key in the file ("bus.kafka.partitions": 14), for errors found later
    lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    #: the file has no [[runs]]: its one run, named "run", is made of [defaults] (said when played)
    default_run: bool = False

    def options(self) -> dict[str, Any]:
        """The [bus] options for this scenario's backend: the shared keys, then each table that
        applies, ``[bus.<backend>]`` last (``nats-js`` is NATS too: ``[bus.nats]`` applies to it)."""
        out = {k: v for k, v in self.bus_options.items() if not isinstance(v, dict)}
        for table in self.option_tables():
            out |= self.bus_options[table]
        return out

    def option_tables(self) -> list[str]:
        """The ``[bus.<name>]`` tables that apply to this backend, most general first."""
        names = [_WIDER[self.backend], self.backend] if self.backend in _WIDER else [self.backend]
        return [n for n in names if isinstance(self.bus_options.get(n), dict)]

    def with_target(self, backend: str | None = None, url: str | None = None,
                    bus: str | None = None) -> Scenario:
        """The same scenario on another backend (command-line overrides)."""
        if bus:
            return replace(self, backend=bus, url=bus)
        if backend:
            check_backend(backend, "--backend")
            if backend not in BUILTIN_BACKENDS:  # package.module:factory, as a file's backend = may be
                return replace(self, backend=backend, url=backend)
            if url and backend_of_url(url) not in (None, backend):
                raise ScenarioError(f"--backend {backend} --url {redact_url(url)}: they disagree; a {backend} URL "
                                    f"starts {_SCHEME_OF[backend]}://, or leave out --backend")
            return replace(self, backend=backend, url=url or BUILTIN_BACKENDS[backend])
        if url:
            # the URL alone decides what runs: the label follows it, so a report never says
            # "memory" for a run on NATS
            return replace(self, url=url, backend=backend_of_url(url) or self.backend)
        return self


def backend_of_url(url: str) -> str | None:
    """The backend a URL runs on (``nats+js://`` → ``nats-js``); None for anything else."""
    scheme = url.split("://", 1)[0] if "://" in url else None
    return next((b for b, sch in _SCHEME_OF.items() if sch == scheme), None)


def check_backend(backend: str, where: str) -> None:
    if backend not in BUILTIN_BACKENDS and not re.fullmatch(r"[\w.]+:[\w.]+", backend):
        raise ScenarioError(f"{where}: expected one of {', '.join(BUILTIN_BACKENDS)} "
                            f"or 'package.module:factory', got {backend!r}")


# -- field checks -----------------------------------------------------------------

Check = tuple[str, Callable[[Any], bool]]

# lo..hi: what a run can allocate up front (keys, payload, tasks, subscriptions), or it dies of memory
_INT = lambda lo, hi=None: (  # noqa: E731
    f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}",
    lambda v: type(v) is int and v >= lo and (hi is None or v <= hi),
)
_NUM = lambda lo, strict=False: (  # noqa: E731
    f"a number {'>' if strict else '>='} {lo}",
    lambda v: type(v) in (int, float) and (v > lo if strict else v >= lo),
)
_STR = ("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()))
_BOOL = ("true or false", lambda v: type(v) is bool)
_PATTERNS = ("a list of non-empty patterns",
             lambda v: isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v))

RUN_FIELDS: dict[str, Check] = {
    "messages": _INT(1), "keys": _INT(1, 1_000_000), "topics": _INT(1, 10_000),
    "payload_bytes": _INT(0, 64 * 1024 * 1024), "rate_per_s": _NUM(0), "publishers": _INT(1, 10_000),
    "hold_s": _NUM(0),
    "load_timeout_s": _NUM(0, strict=True),
}
SUBSCRIBE_FIELDS: dict[str, Check] = {
    "count": _INT(1, 10_000), "group": _STR, "until_s": _NUM(0, strict=True), "group_per_run": _BOOL,
}
PROBE_FIELDS: dict[str, Check] = {
    "interval_ms": _INT(10), "settle_timeout_s": _NUM(0), "settle_poll_ms": _INT(1),
    "ignore_tasks": _PATTERNS, "ignore_threads": _PATTERNS, "trace_creation": _BOOL,
    "ignore_sockets": _PATTERNS, "ignore_processes": _PATTERNS, "ignore_types": _PATTERNS,
    "stall_ms": _INT(1, 600_000), "fail_on_stall_ms": _NUM(0), "trace_memory": _BOOL,
}
DEADLINE_FIELDS: dict[str, Check] = {
    "start_s": _NUM(0, strict=True), "subscribe_s": _NUM(0, strict=True), "close_s": _NUM(0, strict=True),
}
TOP_FIELDS = {"name", "backend", "url", "bus", "probes", "deadlines", "defaults", "runs"}


class _Lines:
    """Where each key sits in the file, so errors can name the line."""

    def __init__(self, text: str) -> None:
        self.where: dict[str, int] = {}
        section, runs = "", -1
        # split on \n only, as TOML counts lines: splitlines() would also break at U+2028, \x85, ...
        for no, raw in enumerate(text.split("\n"), 1):
            line = raw.strip()
            if m := re.match(r"^\[\[\s*([\w.-]+)\s*\]\]", line):
                if m.group(1) == "runs":
                    runs += 1
                    section = f"runs[{runs}]"
                else:
                    section = m.group(1)
                self.where.setdefault(section, no)
            elif m := re.match(r"^\[\s*([\w.-]+)\s*\]", line):
                name = m.group(1)
                section = name.replace("runs.", f"runs[{runs}].", 1) if name.startswith("runs.") else name
                self.where.setdefault(section, no)
            elif m := re.match(r"^([\w-]+)\s*=", line):
                key = f"{section}.{m.group(1)}" if section else m.group(1)
                self.where.setdefault(key, no)

    def line(self, path: str) -> int | None:
        while path:
            if path in self.where:
                return self.where[path]
            path = path.rpartition(".")[0]
        return None


_INT64 = range(-2**63, 2**63)  # TOML's integers; tomllib reads any size
MAX_DEPTH = 32                # tables and arrays nested deeper than this are refused


class _Shown(reprlib.Repr):
    """A value as it was written in TOML (``true``, ``"many"``, ``1000.0``, ``[1, 2]``, a table),
    not as Python shows it (``True``, ``'many'``), kept short: a bad value can be a
    10,000-character string or a 5,000-digit integer (whose plain repr raises ValueError past
    Python's 4,300-digit limit)."""

    def repr_int(self, x: int, level: int) -> str:
        return repr(x) if -10**30 < x < 10**30 else f"<{x.bit_length()}-bit integer>"

    def repr_bool(self, x: bool, level: int) -> str:
        return "true" if x else "false"

    def repr_str(self, x: str, level: int) -> str:
        # printable characters as they are; anything else escaped, so the line stays one line
        text = json.dumps(x[: self.maxstring], ensure_ascii=False)
        text = "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)
        return text if len(x) <= self.maxstring else f"{text[:-1]}…\""

    def repr_float(self, x: float, level: int) -> str:
        return repr(x)

    def repr_list(self, x: list, level: int) -> str:
        items = ", ".join(self.repr1(v, level - 1) for v in x[: self.maxlist])
        return f"[{items}{', …' if len(x) > self.maxlist else ''}]"

    def repr_dict(self, x: dict, level: int) -> str:
        return "a table"

    def repr_tuple(self, x: tuple, level: int) -> str:
        return self.repr_list(list(x), level)


_shown = _Shown().repr


def _key(key: str) -> str:
    """A key as it can be shown in a one-line field path: bare if it is a word, else quoted."""
    return key if re.fullmatch(r"[\w-]{1,40}", key) else _shown(key)


class _Loader:
    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = _Lines(text)

    def fail(self, field_path: str, expected: str, got: Any = None) -> None:
        self.error(field_path, f"expected {expected}, got {_shown(got)}")

    def error(self, field_path: str, message: str) -> None:
        line = self.lines.line(field_path)
        where = f"{self.path}:{line}" if line else self.path
        raise ScenarioError(f"{where}: {field_path}: {message}")

    def unknown(self, field_path: str, known: set[str] | dict) -> None:
        key = field_path.rsplit(".", 1)[-1]
        near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
        hint = f"did you mean {near[0]}? " if near else ""
        self.error(field_path, f"unknown key; {hint}expected one of {', '.join(sorted(known))}")

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, "a table", value)
        return value

    def fields(self, data: dict[str, Any], checks: dict[str, Check], where: str,
               extra: set[str] = frozenset()) -> dict[str, Any]:
        out = {}
        for key, value in data.items():
            path = f"{where}.{_key(key)}" if where else _key(key)
            if key in extra:
                continue
            if key not in checks:
                self.unknown(path, set(checks) | set(extra))
            expected, ok = checks[key]
            if not ok(value):
                self.fail(path, expected, value)
            out[key] = tuple(value) if isinstance(value, list) else value
        return out

    def subscribe(self, value: Any, where: str, base: SubscribeSpec) -> SubscribeSpec:
        data = self.fields(self.table(value, where), SUBSCRIBE_FIELDS, where)
        return replace(base, **data)

    def run_fields(self, data: dict[str, Any], where: str, base: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        out.update(self.fields(data, RUN_FIELDS, where, extra={"name", "subscribe"}))
        if "subscribe" in data:
            out["subscribe"] = self.subscribe(data["subscribe"], f"{where}.subscribe",
                                              base.get("subscribe", SubscribeSpec()))
        return out

    def load(self, doc: dict[str, Any]) -> Scenario:
        if not doc:  # never a silent default run
            self.error("runs", "the file is empty; expected at least one [[runs]] table with a name and "
                               "messages (see sample_configs/quickstart.toml)")
        for key in doc:
            if key not in TOP_FIELDS:
                self.unknown(_key(key), TOP_FIELDS)
        name = doc.get("name", Path(self.path).stem)
        if not _STR[1](name):
            self.fail("name", _STR[0], name)
        backend = doc.get("backend", "memory")
        if not isinstance(backend, str):
            self.fail("backend", "a string", backend)
        try:
            check_backend(backend, "backend")
        except ScenarioError:
            self.fail("backend", f"one of {', '.join(BUILTIN_BACKENDS)} or 'package.module:factory'", backend)
        url = doc.get("url")
        if url is not None and not _STR[1](url):
            self.fail("url", _STR[0], url)
        if backend in BUILTIN_BACKENDS:
            url = url or BUILTIN_BACKENDS[backend]
            scheme = url.split("://", 1)[0] if "://" in url else ""
            if scheme != _SCHEME_OF[backend]:
                self.fail("url", f"a {_SCHEME_OF[backend]}:// URL for backend {backend!r}", redact_url(url))
        else:
            url = backend
        bus_options = dict(self.table(doc.get("bus", {}), "bus"))
        if backend in BUILTIN_BACKENDS:  # a sub-table is options for one backend: a typo is silent
            for key, value in bus_options.items():
                if isinstance(value, dict) and key not in BUILTIN_BACKENDS:
                    self.error(f"bus.{_key(key)}", "unknown backend table; expected one of "
                                             + ", ".join(f"[bus.{b}]" for b in BUILTIN_BACKENDS))
        probes = ProbeSpec(**self.fields(self.table(doc.get("probes", {}), "probes"), PROBE_FIELDS, "probes"))
        deadlines = DeadlineSpec(**self.fields(self.table(doc.get("deadlines", {}), "deadlines"),
                                               DEADLINE_FIELDS, "deadlines"))
        if backend in BUILTIN_BACKENDS:  # busmon must not give up on a close the bus still runs
            specific = bus_options.get(backend)
            for where, table in (("bus", bus_options), (f"bus.{backend}", specific)):
                value = table.get("close_timeout") if isinstance(table, dict) else None
                if type(value) in (int, float) and value >= deadlines.close_s:
                    self.fail(f"{where}.close_timeout",
                              f"less than deadlines.close_s ({deadlines.close_s:g} s)", value)
        defaults = self.run_fields(self.table(doc.get("defaults", {}), "defaults"), "defaults", {})
        runs_doc = doc.get("runs")
        if runs_doc is None:
            runs_doc = [{"name": "run"}]
        if not isinstance(runs_doc, list) or not runs_doc:
            self.fail("runs", "at least one [[runs]] table", runs_doc)
        runs = []
        names: set[str] = set()
        for i, run_doc in enumerate(runs_doc):
            where = f"runs[{i}]"
            run_doc = self.table(run_doc, where)
            run_name = run_doc.get("name", f"run-{i + 1}")
            if not _STR[1](run_name):
                self.fail(f"{where}.name", _STR[0], run_name)
            if run_name in names:
                self.fail(f"{where}.name", "a name no other run has", run_name)
            names.add(run_name)
            runs.append(RunSpec(name=run_name, **self.run_fields(run_doc, where, defaults)))
        self.numbers(doc)
        return Scenario(name=name, backend=backend, url=url, bus_options=bus_options,
                        probes=probes, runs=tuple(runs), path=self.path, deadlines=deadlines,
                        lines=dict(self.lines.where), default_run="runs" not in doc)

    def numbers(self, doc: dict[str, Any]) -> None:
        """Refuse nan, inf, integers beyond 64 bits and deep nesting anywhere, [bus] included.

        They parse, and pass the field checks (inf >= 0), but would break a run much later:
        a sleep that never ends, an OverflowError mid-run, a RecursionError in a report.
        Runs after the field checks, so a string field given nan says "expected a string".
        """
        # a stack, not recursion (tomllib reads ~900 levels); pushed reversed, so file order
        stack: list[tuple[str, Any, int]] = [(_key(k), v, 1) for k, v in reversed(doc.items())]
        while stack:
            where, value, depth = stack.pop()
            if depth > MAX_DEPTH:
                self.error(where, f"nested more than {MAX_DEPTH} tables or arrays deep")
            if isinstance(value, dict):
                stack.extend((f"{where}.{_key(k)}", v, depth + 1) for k, v in reversed(value.items()))
            elif isinstance(value, list):
                stack.extend((f"{where}[{i}]", v, depth + 1) for i, v in reversed(list(enumerate(value))))
            elif type(value) is float and not math.isfinite(value):
                self.fail(where, "a finite number", value)
            elif type(value) is int and value not in _INT64:
                self.fail(where, "an integer that fits in 64 bits", value)


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; raise :class:`ScenarioError` with a one-line reason."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ScenarioError(f"{p}: expected a TOML file, got a directory") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{p}: not a UTF-8 text file (a scenario is TOML text)") from None
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return parse_scenario(text, str(p))


def parse_scenario(text: str, path: str = "<scenario>") -> Scenario:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        where = f"{path}:{m.group(1)}" if m else path
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        raise ScenarioError(f"{where}: not valid TOML: {reason}") from None
    except ValueError:  # tomllib's only other ValueError: Python's limit on int(str) digits
        raise ScenarioError(f"{path}: not valid TOML: an integer with more than "
                            f"{sys.get_int_max_str_digits()} digits") from None
    except RecursionError:
        raise ScenarioError(f"{path}: not valid TOML: arrays or tables nested too deeply to read") from None
    return _Loader(path, text).load(doc)
