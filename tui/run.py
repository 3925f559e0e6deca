"""Running the dashboard: interactive, scripted, or off screen (Textual's headless mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from busmon.probes.model import ScenarioResult
from busmon.probes.harness.scenario import Scenario
from busmon.tui.presence import someone_watching
from busmon.tui.app import BusmonApp
from busmon.tui.controller import Controller

HEADLESS_SIZE = (120, 40)


def run_dashboard(scenario: Scenario, *, interactive: bool, record: Callable[[object], None] | None = None,
                  recording_to: str = "") -> tuple[int, ScenarioResult]:
    """The interactive dashboard; returns the exit code of the runs seen, and those runs (so the
    terminal keeps their summary once the dashboard is gone)."""
    controller = Controller(scenario, interactive=interactive, record=record, recording_to=recording_to)
    app = BusmonApp(controller)
    try:
        code = app.run()
    finally:
        controller.shutdown()
    return code or 0, ScenarioResult(scenario.name, tuple(controller.session.results))


def play_dashboard(scenario: Scenario, *, headless: bool, screenshots: Path | None,
                   record: Callable[[object], None] | None = None, recording_to: str = ""
                   ) -> tuple[ScenarioResult | None, list[tuple[str, str]]]:
    """Scripted playback in the dashboard; stays on the final screen until q, unless headless."""
    controller = Controller(scenario, interactive=False, record=record, recording_to=recording_to)
    # with no terminal or page to press q in (CI, a pipe), the dashboard ends with the playback
    exit_when_done = headless or not someone_watching()
    app = BusmonApp(controller, screenshots=screenshots, exit_when_done=exit_when_done, keep_screenshots=True)
    try:
        app.run(headless=headless, size=HEADLESS_SIZE if headless else None)
    finally:
        controller.shutdown()
    result = app.done.result if app.done is not None else None
    if result is None:  # quit before the end: what was measured, marked as interrupted
        result = ScenarioResult(scenario.name, tuple(controller.session.results), interrupted=True)
    return result, app.shots
