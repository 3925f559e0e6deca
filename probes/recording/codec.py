"""Events as JSON lines and back: one object per line, ``{"t": seconds, "type": name, …fields}``.

Every record is a frozen dataclass of :mod:`busmon.probes.model` (or of the gate, or of
:mod:`.records`); its fields are written by name and read back checked against their declared
types, so a line that parses as JSON but holds the wrong shapes is refused as damaged instead of
reaching a screen. A sample's tasks-by-component mapping (100 components are ~3 KB) is written
whole at a run's first sample and every ``FULL_EVERY`` samples, and otherwise as what changed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, Mapping

from busmon.probes.harness.gate import AwaitingStep
from busmon.probes.model import FailureNoted, Leftover, PhaseSnapshot, PhaseStarted, RunFinished, RunResult, Sample
from busmon.probes.recording.records import FORMAT, Ended, Header, Segment

#: line type → record class (the names are the file format: never renamed)
TYPES: dict[str, type] = {
    "phase_started": PhaseStarted, "sample": Sample, "snapshot": PhaseSnapshot, "awaiting": AwaitingStep,
    "failure": FailureNoted, "run_finished": RunFinished, "segment": Segment, "ended": Ended,
}
NAMES = {cls: name for name, cls in TYPES.items()}
#: nested records, by the name their fields' annotations use
NESTED: dict[str, type] = {"RunResult": RunResult, "PhaseSnapshot": PhaseSnapshot, "Leftover": Leftover}
#: a sample's by_component is written whole this often (and at each run's first sample)
FULL_EVERY = 100


class DamagedLine(ValueError):
    """A line that is JSON but not a record this reader knows: says what is wrong with it."""


def _plain(value: Any) -> Any:
    """A record's value as JSON holds it: dataclasses as objects, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class Encoder:
    """Turns events into line objects; keeps the last by_component per run for the deltas."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, int]] = {}
        self._since_full: dict[str, int] = {}

    def encode(self, t: float, event: Any) -> dict[str, Any]:
        name = NAMES.get(type(event))
        if name is None:
            raise TypeError(f"not a recordable event: {type(event).__name__}")
        line: dict[str, Any] = {"t": round(t, 4), "type": name}
        if isinstance(event, Sample):
            fields = _plain(event)
            now = fields.pop("by_component")
            last = self._last.get(event.run)
            n = self._since_full.get(event.run, FULL_EVERY)
            if last is None or n >= FULL_EVERY:
                fields["by_component"] = now
                self._since_full[event.run] = 1
            else:
                changed = {k: v for k, v in now.items() if last.get(k) != v}
                changed.update({k: None for k in last if k not in now})
                fields["by_component_changes"] = changed
                self._since_full[event.run] = n + 1
            self._last[event.run] = now
            line.update(fields)
        else:
            line.update(_plain(event))
        return line


def encode_header(header: Header) -> dict[str, Any]:
    return {"format": FORMAT, **_plain(header)}


# -- reading ---------------------------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls, localns=NESTED)
    return hints


#: a scalar field's type → the JSON values it takes, and how a damaged one is described
SCALARS: dict[type, tuple[tuple[type, ...], str]] = {
    float: ((int, float), "a number"), int: ((int,), "an integer"), str: ((str,), "a string"),
    bool: ((bool,), "true or false"),
}


def _check(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the record's field wants it (lists to tuples, nested records built); raises
    DamagedLine naming the field when it is not that."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _check(value, rest[0], where) if len(rest) == 1 else value
    if hint in SCALARS:
        accepted, expected = SCALARS[hint]
        if type(value) in accepted:  # exact: JSON's true is no integer here, 1 is no string
            return float(value) if hint is float else value
        raise DamagedLine(f"{where}: expected {expected}, got {_shown(value)}")
    if origin is tuple:
        if not isinstance(value, list):
            raise DamagedLine(f"{where}: expected a list, got {_shown(value)}")
        item = args[0] if args else Any
        return tuple(_check(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or hint in (Mapping, dict):
        if not isinstance(value, dict):
            raise DamagedLine(f"{where}: expected an object, got {_shown(value)}")
        if len(args) == 2:
            return {k: _check(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise DamagedLine(f"{where}: expected an object, got {_shown(value)}")
        return build(hint, value, where)
    return value


def _shown(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """``cls`` from ``data``'s fields, each checked; unknown fields are left out (an older reader
    meets a newer minor's extra field), a missing one without a default is damage."""
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _check(data[f.name], hints[f.name], f"{where}.{f.name}" if where else f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise DamagedLine(f"{where + ': ' if where else ''}missing field {f.name!r}")
    return cls(**kwargs)


class Decoder:
    """Turns line objects back into ``(t, event)``; follows the by_component deltas per run."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, int]] = {}

    def decode(self, line: Any) -> tuple[float, Any]:
        if not isinstance(line, dict):
            raise DamagedLine(f"expected an object, got {_shown(line)}")
        kind = line.get("type")
        cls = TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise DamagedLine(f"type: expected one of {', '.join(TYPES)}, got {_shown(kind)}")
        t = line.get("t")
        if type(t) not in (int, float) or not math.isfinite(t) or t < 0:
            raise DamagedLine(f"t: expected seconds since the recording started, got {_shown(t)}")
        if cls is Sample:
            line = self._whole_sample(line)
        return float(t), build(cls, line, "")

    def _whole_sample(self, line: dict[str, Any]) -> dict[str, Any]:
        run = line.get("run")
        if not isinstance(run, str):
            raise DamagedLine(f"run: expected a string, got {_shown(run)}")
        if "by_component" in line:
            whole = line["by_component"]
            if not isinstance(whole, dict):
                raise DamagedLine(f"by_component: expected an object, got {_shown(whole)}")
        else:
            changes = line.get("by_component_changes")
            if not isinstance(changes, dict):
                raise DamagedLine("by_component: missing (neither whole nor as changes)")
            last = self._last.get(run)
            if last is None:
                raise DamagedLine(f"by_component_changes: no earlier sample of run {run!r} to apply them to")
            whole = {**last, **changes}
            whole = {k: v for k, v in whole.items() if v is not None}
        checked = _check(whole, Mapping[str, int], "by_component")
        self._last[run] = checked
        return {**line, "by_component": checked}


def read_header(line: Any, newest: int, fail: Callable[[str], Exception]) -> Header:
    """The first line as a Header; ``fail(message)`` makes the error for a file that is not a
    recording this busmon reads (not one at all, or a newer version)."""
    if not isinstance(line, dict) or line.get("format") != FORMAT:
        raise fail("not a busmon recording (its first line should say \"format\": \"busmon-recording\")")
    version = line.get("version")
    if type(version) is not int or version < 1:
        raise fail(f"version: expected a whole number, got {_shown(version)}")
    if version > newest:
        raise fail(f"recording format version {version} is newer than this busmon reads (up to {newest}); "
                   "upgrade busmon to replay it")
    try:
        return build(Header, line, "")
    except DamagedLine as exc:
        raise fail(f"its first line is damaged: {exc}") from None
