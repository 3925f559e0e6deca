"""busmon's verdict around tests: ``@pytest.mark.busmon``, ``pytest --busmon``, the ``busmon``
fixture. Installed with busmon (a ``pytest11`` entry point); it does nothing unless asked.

When is what measured, and on which loop:

- the **baseline** is taken before the test's function fixtures are set up (after those of wider
  scope, which belong to the harness): what a function fixture starts and never stops is the
  test's leak;
- the **verdict** comes after the test's function fixtures are torn down, on the test's own
  event loop: busmon's guard fixture is set up first (right after the loop's owner, which it
  requests), so it is torn down last, while the loop is still open. Then busmon runs that loop
  until everything the test started has exited, or the settle deadline, and judges.

Loops busmon knows how to keep open: pytest-asyncio's (any loop scope) and anyio's (asyncio
backend). Sync tests are judged for threads, sockets and processes. A test that leaked fails
at teardown with the report; one whose leftovers only lingered passes (the terminal summary
says so). A test that failed or was skipped is not judged: its own outcome is what matters.

Nothing heavier than pytest is imported until a test is watched.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Iterator

import pytest

if TYPE_CHECKING:
    import asyncio

    from busmon.probes.watching.watch import Watch, WatchOptions, WatchResult

GUARD = "_busmon_guard"
INI = {
    "busmon_settle_timeout_s": ("settle_timeout_s", "string",
                                "how long busmon waits, after a test, for what it started to exit (s)"),
    "busmon_poll_ms": ("poll_ms", "string", "how often threads, sockets and processes are looked at (ms)"),
    "busmon_ignore_tasks": ("ignore_tasks", "linelist", "task patterns never failing a test (qualname or name)"),
    "busmon_ignore_threads": ("ignore_threads", "linelist", "thread name patterns never failing a test"),
    "busmon_ignore_sockets": ("ignore_sockets", "linelist", "socket patterns (address, port or label)"),
    "busmon_ignore_processes": ("ignore_processes", "linelist", "child process command line patterns"),
    "busmon_judge": ("judge", "args", "kinds judged: tasks threads timers sockets fds processes"),
    "busmon_trace_creation": ("trace_creation", "string", "record where each task was created and each thread started (true/false)"),
    "busmon_on_leak": ("on_leak", "string", "raise (fail the test, the default) | warn | ignore"),
    "busmon_stall_ms": ("stall_ms", "string", "an async test's loop running nothing this long is a stall, "
                        "warned of (ms; default 100; 0: not watched)"),
    "busmon_fail_on_stall_ms": ("fail_on_stall_ms", "string", "a stall at least this long fails the test "
                                "(ms; unset: stalls only warn)"),
}
#: pytest ≥ 7 (stash). On an older pytest the plugin stays out of the way: it registers nothing
#: that could break a suite, and ``--busmon`` says what it needs.
SUPPORTED = hasattr(pytest, "StashKey")
_OPTIONS = pytest.StashKey["WatchOptions"]() if SUPPORTED else None
_STATE = pytest.StashKey["TestWatch"]() if SUPPORTED else None


@dataclass(eq=False)  # a registered plugin must be hashable
class Stats:
    """What the terminal summary says: tests judged, leaked, lingered. Gathered from the teardown
    reports (their ``busmon`` field), so under pytest-xdist the controller sees every worker's."""

    judged: int = 0
    leaked: list[str] = field(default_factory=list)
    lingered: list[tuple[str, float]] = field(default_factory=list)        # node, slowest exit (ms)
    unjudged: list[tuple[str, str]] = field(default_factory=list)          # node, why
    not_failed: dict[str, str] = field(default_factory=dict)   # leaked, not failed: node → on_leak
    stalled: list[tuple[str, float]] = field(default_factory=list)         # node, longest stall (ms)
    stall_failed: int = 0                                                  # of those, failed on it

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        info = getattr(report, "busmon", None)
        if report.when != "teardown" or not isinstance(info, dict):
            return
        if info.get("error"):
            self.unjudged.append((report.nodeid, info["error"]))
            return
        self.judged += 1
        if info.get("stalls"):
            self.stalled.append((report.nodeid, float(info.get("longest_stall_ms") or 0.0)))
            if info.get("stall_failed"):
                self.stall_failed += 1
        if info.get("leaked"):
            self.leaked.append(report.nodeid)
            if not info.get("failed"):
                self.not_failed[report.nodeid] = str(info.get("on_leak"))
        elif info.get("lingered_ms") is not None:
            self.lingered.append((report.nodeid, info["lingered_ms"]))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not (self.judged or self.unjudged):
            return
        parts = [f"{self.judged} test{'s' if self.judged != 1 else ''} judged"]
        if self.leaked:
            parts.append(f"{len(self.leaked)} leaked")
            modes = list(self.not_failed.values())
            told = [f"{modes.count(m)} {'warned of' if m == 'warn' else 'ignored'}" for m in ("warn", "ignore")
                    if m in modes]
            if told:
                parts[-1] += f" ({', '.join(told)}: on_leak, not failed)"
        if self.lingered:
            node, ms = max(self.lingered, key=lambda x: x[1])
            parts.append(f"{len(self.lingered)} clean once their leftovers exited (the slowest {ms:,.1f} ms: {node})")
        if self.stalled:
            node, ms = max(self.stalled, key=lambda x: x[1])
            n = len(self.stalled)
            failed = f", {self.stall_failed} failed on it" if self.stall_failed else ""
            parts.append(f"{n} blocked {'its' if n == 1 else 'their'} event loop{failed} (the longest {ms:,.0f} ms: "
                         f"{node}; -rP shows where)")
        terminalreporter.write_sep("-", "busmon", bold=True)
        terminalreporter.write_line("busmon: " + ", ".join(parts))
        for node, why in self.unjudged:
            terminalreporter.write_line(f"busmon: {node}: {why}")


# -- options ---------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("busmon", "busmon: what a test leaves running (tasks, threads, sockets, processes)")
    group.addoption("--busmon", action="store_true", default=False,
                    help="judge every test for what it leaves running (one test: @pytest.mark.busmon)")
    group.addoption("--no-busmon", action="store_true", default=False, dest="no_busmon",
                    help="judge no test, whatever the markers and --busmon say (tests that use the "
                         "busmon fixture still are)")
    for name, (_, kind, help_text) in INI.items():
        parser.addini(name, help_text, type=kind)  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    if not SUPPORTED:
        if config.getoption("busmon"):
            raise pytest.UsageError(f"--busmon needs pytest ≥ 7 (this is pytest {pytest.__version__})")
        return
    config.addinivalue_line(
        "markers", "busmon(**options): fail the test if it leaves tasks, threads, timers, sockets or "
        "processes running after its teardown; options: settle_timeout_s, ignore_tasks, ignore_threads, "
        "ignore_sockets, ignore_processes, judge, trace_creation, poll_ms, on_leak, stall_ms, fail_on_stall_ms, "
        "enabled")
    values: dict[str, Any] = {}
    for name, (option, kind, _) in INI.items():
        value = config.getini(name)
        if value in (None, "", []):
            continue
        values[option] = value
    from busmon.probes.watching.watch_options import WatchOptionError, WatchOptions
    try:
        # a test that leaks fails, unless the ini file or the marker says warn or ignore
        config.stash[_OPTIONS] = WatchOptions(on_leak="raise").merged(values, where=_ini_file(config),
                                                                      prefix="busmon_")
    except WatchOptionError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(Stats(), "busmon-summary")


def _ini_file(config: pytest.Config) -> str:
    return str(config.inipath.name) if config.inipath else "the ini file"


def _marker_options(item: pytest.Item, base: WatchOptions) -> WatchOptions | None:
    """The item's options, or None when it is not to be watched.

    Markers apply from the farthest (module ``pytestmark``, class) to the closest (the test):
    a closer one's values win, ignore rules add up; the ini file's are under all of them.
    ``--no-busmon`` watches only the tests that ask for the ``busmon`` fixture.
    """
    from busmon.probes.watching.watch_options import WatchOptionError, flag

    markers = list(item.iter_markers("busmon"))[::-1]
    uses_fixture = "busmon" in getattr(item, "fixturenames", ())
    if item.config.getoption("no_busmon") and not uses_fixture:
        return None
    if not (item.config.getoption("busmon") or markers or uses_fixture):
        return None
    options, enabled = base, True
    for marker in markers:
        where = f"{item.nodeid}: @pytest.mark.busmon"
        if marker.args:
            raise pytest.UsageError(f"{where}: takes options as keywords (e.g. settle_timeout_s=5), "
                                    f"got {marker.args[0]!r}")
        kwargs = dict(marker.kwargs)
        if "enabled" in kwargs:
            value = kwargs.pop("enabled")
            if flag(value) is None:
                raise pytest.UsageError(f"{where}: enabled: expected True or False, got {value!r}")
            enabled = bool(flag(value))
        try:
            options = options.merged(kwargs, where=where, also=("enabled",))
        except WatchOptionError as exc:
            raise pytest.UsageError(str(exc)) from None
    return options if enabled or uses_fixture else None


@pytest.hookimpl(trylast=True)  # after -k / -m deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not SUPPORTED:
        return
    base = config.stash.get(_OPTIONS, None)
    if base is None:
        return
    mistakes: list[str] = []
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        try:
            options = _marker_options(item, base)
        except pytest.UsageError as exc:  # every bad marker, one line each, then stop
            mistakes.append(str(exc))
            continue
        if options is not None:
            item.stash[_OPTIONS] = options
    if mistakes:
        raise pytest.UsageError("\n".join(dict.fromkeys(mistakes)))


# -- the test's loop -------------------------------------------------------------------------

@dataclass
class Harness:
    """The event loop a test runs on, kept open until busmon's verdict, and the harness's own
    tasks on it (never the test's)."""

    loop: asyncio.AbstractEventLoop | None = None
    exclude: Callable[[Any], list[Any]] | None = None
    note: str | None = None


def _is_async(item: pytest.Item) -> bool:
    fn = getattr(item, "obj", None)
    fn = getattr(getattr(fn, "hypothesis", None), "inner_test", fn)  # a @given test wraps the real one
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def find_harness(item: pytest.Function, request: pytest.FixtureRequest, stack: contextlib.ExitStack) -> Harness:
    """The loop an async test will run on: pytest-asyncio's runner, or an anyio runner held open
    (a lease) until the verdict; None for a sync test."""
    if not _is_async(item):
        return Harness()
    if any(c.__name__ == "PytestAsyncioFunction" for c in type(item).__mro__):
        runner = request.getfixturevalue(f"_{_asyncio_loop_scope(item)}_scoped_runner")
        return Harness(runner.get_loop())
    if "anyio_backend" in item.fixturenames:
        try:
            from anyio.pytest_plugin import extract_backend_and_options, get_runner
        except ImportError:
            return Harness(note="tasks not judged: this anyio has no get_runner() to keep its loop open")
        name, options = extract_backend_and_options(request.getfixturevalue("anyio_backend"))
        if name != "asyncio":
            return Harness(note=backend_note(name))
        runner = stack.enter_context(get_runner(name, options))
        return Harness(runner.get_loop(), exclude=_anyio_runner_tasks)
    case = getattr(getattr(item, "parent", None), "obj", None)
    if isinstance(case, type) and any(c.__name__ == "IsolatedAsyncioTestCase" for c in case.__mro__):
        return Harness(note="tasks not judged: unittest's IsolatedAsyncioTestCase runs each test on a loop "
                            "of its own and closes it, cancelling what was left, before busmon's verdict")
    return Harness(note="tasks not judged: busmon keeps the loops of pytest-asyncio and anyio open for "
                        "the verdict, and neither runs this test")


def backend_note(name: str) -> str:
    """What is and is not judged when anyio runs a test on another backend than asyncio."""
    note = (f"tasks and timers not judged, nor the loop watched for stalls: anyio runs this test on "
            f"{name}, and busmon judges asyncio's; threads, sockets, descriptors and child processes are judged")
    if name == "trio":
        note += ("; trio's thread-cache workers count as runtime machinery while idle or waiting for "
                 "trio's I/O (guest mode), and as the test's while running a job it submitted")
    return note


def _asyncio_loop_scope(item: pytest.Function) -> str:
    scope = getattr(item, "_loop_scope", None)   # pytest-asyncio ≥ 1.0 computes it
    if scope:
        return str(scope)
    marker = item.get_closest_marker("asyncio")
    kwargs = marker.kwargs if marker is not None else {}
    return kwargs.get("loop_scope") or kwargs.get("scope") or item.config.getini(
        "asyncio_default_test_loop_scope") or "function"


#: anyio's own tasks: the runner task that runs every test and fixture of a runner in turn, and
#: the task that hands it one call and waits for its result
ANYIO_RUNNER_TASKS = ("TestRunner._run_tests_and_fixtures", "TestRunner._call_in_runner_task")


def _anyio_runner_tasks(loop: Any) -> list[Any]:
    import asyncio

    return [t for t in asyncio.all_tasks(loop)
            if getattr(t.get_coro(), "__qualname__", "").endswith(ANYIO_RUNNER_TASKS)]


# -- one test's watch ------------------------------------------------------------------------

class TestWatch:
    """busmon's watch over one test; the ``busmon`` fixture is this object.

    ``check()`` (sync tests) and ``await acheck()`` (async tests) judge what the test left so
    far, then take a new baseline: what they reported is the test's to assert on, and does not
    fail it again at teardown.
    """

    __test__ = False  # not a test class, whatever pytest's collector thinks of the name

    def __init__(self, item: pytest.Function, options: WatchOptions, harness: Harness) -> None:
        self.item = item
        self.options = options
        self.harness = harness
        self.watch: Watch | None = None
        self.result: WatchResult | None = None
        self.why_not: str | None = None     # why no verdict was taken
        self.error: str | None = None       # busmon's own failure to judge, said in the summary
        self.call_failed = False

    def _new_watch(self) -> Watch:
        from busmon.probes.watching.watch import Watch

        w = Watch(self.options, label=self.item.nodeid, exclude=self.harness.exclude)
        if self.harness.note:
            w.notes.append(self.harness.note)
        return w

    def start(self) -> None:
        self.watch = self._new_watch()
        self.watch.start(self.harness.loop)

    def phase(self, name: str) -> None:
        """What the test's loop runs from now on (``setup``, ``run``, ``teardown``): its stalls
        say so."""
        if self.watch is not None:
            self.watch.set_phase(name)

    def check(self) -> WatchResult:
        """The verdict so far, in a sync test (a new baseline follows)."""
        __tracebackhide__ = True
        if self.harness.loop is not None:
            raise RuntimeError("busmon.check() in an async test: use 'await busmon.acheck()'")
        assert self.watch is not None, "check() is for the test body"
        self.watch.options = self.options  # a test may have changed them (e.g. a shorter settle)
        result = self.watch.settle_blocking()
        self.start()
        return result

    def acheck(self) -> Coroutine[Any, Any, WatchResult]:
        """The verdict so far, in an async test, on its loop (a new baseline follows)."""
        __tracebackhide__ = True
        if self.harness.loop is None:
            raise RuntimeError("busmon.acheck() in a sync test: use busmon.check()")
        return self._acheck()

    async def _acheck(self) -> WatchResult:
        assert self.watch is not None, "acheck() is for the test body"
        self.watch.options = self.options
        result = await self.watch.settle()
        self.start()
        return result

    def finish(self) -> None:
        """After the test's fixtures are torn down: settle and judge (a test that failed or was
        skipped is not judged)."""
        w, self.watch = self.watch, None
        if w is None:
            self.why_not = "not judged: the test body did not run"
            return
        if self.call_failed:
            w.stop()
            self.why_not = "not judged: the test failed or was skipped"
            return
        self.result = w.settle_blocking()


@pytest.fixture
def _busmon_guard(request: pytest.FixtureRequest) -> Iterator[TestWatch | None]:
    """Set up first and torn down last (after the loop's owner, which it requests): the verdict
    comes after every other function fixture's teardown, on a loop still open."""
    item = request.node
    options = item.stash.get(_OPTIONS, None) if SUPPORTED and isinstance(item, pytest.Function) else None
    if options is None:
        yield None
        return
    with contextlib.ExitStack() as stack:
        _set_up_the_harness_fixtures(item, request)
        try:
            harness = find_harness(item, request, stack)
        except Exception as exc:  # a harness busmon does not know this well: judge without its tasks
            harness = Harness(note=f"tasks not judged: the test's event loop was not found "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        state = TestWatch(item, options, harness)
        item.stash[_STATE] = state
        state.start()   # the baseline: before the test's own function fixtures are set up
        state.phase("setup")
        yield state
        try:
            state.finish()
        except Exception as exc:  # busmon's own failure must not fail someone's test
            state.error = state.why_not = f"busmon could not judge this test: {type(exc).__name__}: {exc}"
            warnings.warn(pytest.PytestWarning(f"{item.nodeid}: {state.error}"), stacklevel=1)


def _set_up_the_harness_fixtures(item: pytest.Function, request: pytest.FixtureRequest) -> None:
    """Set up, before the baseline, every fixture of the test with a scope wider than the
    function's: what a session, package, module or class fixture holds is the harness's, shared
    with other tests, even when this is the first test that asks for it. Its function fixtures
    come after the baseline: what they start and never stop is the test's leak."""
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", None) or {}
    for name in list(item.fixturenames):
        chain = defs.get(name)
        if name in (GUARD, "busmon") or not chain or _scope(chain[-1]) == "function":
            continue
        request.getfixturevalue(name)


def _scope(fixturedef: Any) -> str:
    scope = getattr(fixturedef, "scope", "function")  # a str (pytest ≥ 8) or a Scope enum
    return str(getattr(scope, "value", scope))


@pytest.fixture
def busmon(_busmon_guard: TestWatch | None) -> TestWatch:
    """This test's watch: ``check()`` / ``await acheck()`` return the verdict so far."""
    assert _busmon_guard is not None
    return _busmon_guard


# -- hooks around each test -----------------------------------------------------------------

# old-style hook wrappers (``hookwrapper=True``): every pytest this plugin may be loaded into
# understands them, so busmon being installed can never break a suite that does not use it

@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    if SUPPORTED and _OPTIONS in item.stash and GUARD not in item.fixturenames:  # type: ignore[attr-defined]
        item.fixturenames.insert(0, GUARD)  # type: ignore[attr-defined]
    yield


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    state = item.stash.get(_STATE, None) if SUPPORTED else None
    if state is not None:
        state.phase("run")
    outcome = yield
    if state is not None:
        state.phase("teardown")
    if state is not None and outcome.excinfo is not None:
        state.call_failed = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    state = item.stash.get(_STATE, None) if SUPPORTED else None
    if state is not None:
        _judged(item, call, state, outcome.get_result())


def _judged(item: pytest.Item, call: pytest.CallInfo[None], state: TestWatch, report: pytest.TestReport) -> None:
    """The teardown report carries the verdict: failed with the leak report, or passed (with
    what lingered as a section, shown by -rP)."""
    if call.when in ("setup", "call") and not report.passed:  # a fixture failed, or the test did
        state.call_failed = True
    if call.when != "teardown":
        return
    result = state.result
    if result is None:
        if state.error:
            report.busmon = {"error": state.error}  # type: ignore[attr-defined]
        return
    failed = False
    report.user_properties.append(("busmon", result.summary()))
    if result.leaked:
        text = result.report("after the test's teardown", stalls=False)
        if state.options.on_leak != "raise":  # told, not failed: a suite adopting busmon step by step
            if state.options.on_leak == "warn" and not _warned(item, result):
                failed = True  # -W error made the warning an error: the test fails on it, the
                report.outcome = "failed"  # report said once, as the failure
                report.longrepr = leak_longrepr(text, item, result)
            else:
                report.sections.append(("busmon after teardown", text))
        elif report.passed:
            failed = True
            report.outcome = "failed"
            report.longrepr = leak_longrepr(text, item, result)
        else:
            failed = True
            report.sections.append(("busmon", text))
    elif result.leftovers or result.notes:
        # what lingered, what the rules ignored, what could not be judged: shown with -rP / -rA
        # (pytest shows a passed test's sections whose name says "teardown")
        report.sections.append(("busmon after teardown", result.report("after the test's teardown", stalls=False)))
    stall_failed = _told_stalls(item, state, result, report)
    failed = stall_failed or failed
    lingered = max((x.exited_after_ms or 0.0 for x in result.lingered), default=None)
    # read by the summary, here or (under pytest-xdist) on the controller
    report.busmon = {"verdict": result.verdict, "leaked": bool(result.leaked),  # type: ignore[attr-defined]
                     "failed": failed, "on_leak": state.options.on_leak, "lingered_ms": lingered,
                     "stalls": len(result.stalls), "stall_failed": stall_failed,
                     "longest_stall_ms": max((s.duration_ms for s in result.stalls), default=None)}


#: the section of a test's stalls; "teardown" in its name: pytest shows it for a passed test (-rP)
STALL_SECTION = "busmon stalls, setup to teardown"


def _told_stalls(item: pytest.Item, state: TestWatch, result: WatchResult, report: pytest.TestReport) -> bool:
    """The test's loop stalled (an async test, watched from the baseline to the verdict): a
    section with each stall's blocking call and a :class:`~busmon.StallWarning`; the test
    fails when a stall lasted ``fail_on_stall_ms`` or more, or when a warning filter names
    ``StallWarning`` as an error. A suite's blanket ``-W error`` (httpx's ``filterwarnings =
    error``, written for its own warnings) does not: the section and the summary tell the stall,
    the test keeps its outcome. True when the stalls failed it."""
    if not result.stalls:
        return False
    head = f"busmon: {item.nodeid} blocked its event loop\n"
    from busmon.probes.watching.watch import StallWarning

    if not result.failing_stalls and (_stall_warned(item, result) or not _named_as_error(StallWarning)):
        report.sections.append((STALL_SECTION, head + result.stall_report("during the test")))
        return False
    rule = "" if result.failing_stalls else "a failure (a warning filter makes StallWarning an error)"
    text = head + result.stall_report("during the test", rule)
    if report.passed:
        report.outcome = "failed"
        report.longrepr = leak_longrepr(text, item, result, f"busmon: {result.stall_line()}")
    else:  # failed already (a leak): its report says so, the stalls beside it
        report.sections.append((STALL_SECTION, text))
    return True


def _named_as_error(category: type[Warning]) -> bool:
    """Whether a warning filter in force makes busmon's warning class ``category`` (or a
    subclass of it) an error by naming it, rather than all warnings at once."""
    import warnings

    return any(action == "error" and isinstance(cat, type) and issubclass(cat, category)
               for action, _, cat, _, _ in warnings.filters)


def _stall_warned(item: pytest.Item, result: WatchResult) -> bool:
    """Warn of the stalls; False when the warning filters make it an error (then the section
    and the summary tell it)."""
    from busmon.probes.watching.watch import StallWarning

    try:
        item.warn(StallWarning(f"busmon: {result.stall_line()} (-rP shows the stack)"))
    except Warning:
        return False
    return True


def _warned(item: pytest.Item, result: WatchResult) -> bool:
    """Warn of a leak (``on_leak = warn``); False when the warning filters make it an error."""
    from busmon.probes.verdict.leak_text import short_line
    from busmon.probes.watching.watch import LeakWarning

    try:
        item.warn(LeakWarning(f"busmon: {short_line(result.leaked)} (-rP shows the report)"))
    except Warning:
        return False
    return True


def leak_longrepr(text: str, item: pytest.Item, result: WatchResult, message: str = "") -> Any:
    """The report as pytest's own exception representation when this pytest has it: its short
    summary then says what leaked, and pytest-xdist carries it whole from its workers (a repr of
    busmon's own class would reach the controller as plain text, without the short line)."""
    from busmon.probes.verdict.leak_text import short_line

    path, lineno, _ = item.location
    message = message or f"busmon: {short_line(result.leaked)}"
    try:
        from _pytest._code.code import ReprExceptionInfo, ReprFileLocation, ReprTracebackNative

        return ReprExceptionInfo(ReprTracebackNative([line + "\n" for line in text.splitlines()]),
                                 ReprFileLocation(path, (lineno or 0) + 1, message))
    except (ImportError, TypeError):  # another pytest's internals: the text, and our own short line
        return LeakRepr(text, path, (lineno or 0) + 1, message)


class LeakRepr:
    """A failing test's leak report as pytest shows it: the text in full, and one line for the
    short summary (``ERROR test_x.py::test_y - busmon: leaked 3 tasks: …``)."""

    def __init__(self, text: str, path: str, lineno: int, message: str) -> None:
        self.text = text
        self.reprcrash = _Crash(path, lineno, message)

    def toterminal(self, tw: Any) -> None:
        for line in self.text.splitlines():
            tw.line(line, red=line.startswith("busmon:"), bold=line.startswith("busmon:"))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class _Crash:
    path: str
    lineno: int
    message: str
