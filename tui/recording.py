"""``--record FILE``: the recording's first line from the scenario as played, and its last line
from the command's result. Textual-free: headless playback records too."""

from __future__ import annotations

import dataclasses
import datetime
import platform
from pathlib import Path
from typing import Any, Callable, Mapping

from busmon.bus.secrets import redact_options, redact_url
from busmon.probes.harness.scenario import Scenario
from busmon.probes.model import ScenarioResult
from busmon.probes.recording.records import Ended, Header
from busmon.probes.recording.writer import Recorder


class RecordPathError(ValueError):
    """``--record FILE`` cannot be opened for writing: one line, said before anything runs."""


def scenario_as_played(sc: Scenario) -> dict[str, Any]:
    """The scenario as a plain mapping, secrets masked (the writer scrubs every string again)."""
    data = {f.name: getattr(sc, f.name) for f in dataclasses.fields(sc) if f.name != "lines"}
    data = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in data.items()}
    data["runs"] = [dataclasses.asdict(r) for r in sc.runs]
    data["url"] = redact_url(sc.url)
    data["bus_options"] = redact_options(sc.bus_options)
    return data


def start(path: Path, command: str, sc: Scenario, scenario_path: str | None, *, headless: bool,
          backends: tuple[str, ...] = ()) -> Recorder:
    """Open the recording of a played scenario and write its first line."""
    return open_recording(path, command, scenario_as_played(sc), scenario_path, redact_url(sc.url),
                          headless=headless, backends=backends)


def open_recording(path: Path, command: str, scenario: Mapping[str, Any], scenario_path: str | None,
                   target: str, *, headless: bool, backends: tuple[str, ...] = ()) -> Recorder:
    """Open a recording and write its first line: what was recorded (a scenario as played, or a
    program: ``busmon run``, ``busmon attach``), by which busmon, where and when."""
    header = Header(command=command, scenario=scenario, scenario_path=scenario_path,
                    target=target, busmon=_version(), python=platform.python_version(),
                    platform=platform.platform(),
                    started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    headless=headless, backends=backends)
    try:
        return Recorder(path, header)
    except OSError as exc:
        raise RecordPathError(f"--record {path}: cannot write: {exc.strerror or exc}") from None


def finish(recorder: Recorder | None, result: ScenarioResult | None, say: Callable[[str], None]) -> None:
    """Write the last line (how the command ended) and say where the recording is."""
    if recorder is None:
        return
    logs = tuple(line.as_dict() for line in result.logs) if result is not None else ()
    recorder.close(Ended(interrupted=result.interrupted if result is not None else True, logs=logs))
    if recorder.error:
        say(f"busmon: recording stopped early: {recorder.error}")
    else:
        say(f"recorded to {recorder.path}")


def tee(first: Callable[[object], None], *others: Callable[[object], None] | None) -> Callable[[object], None]:
    """A sink that hands every event to ``first`` and to each of ``others`` given (the recorder
    when recording, the metrics' feed when serving them; None: not given)."""
    given = [sink for sink in others if sink is not None]
    if not given:
        return first

    def each(event: object) -> None:
        first(event)
        for sink in given:
            sink(event)

    return each


def _version() -> str:
    from busmon.tui.report import busmon_version

    return busmon_version()
