"""Recording the event stream and replaying it (issue 25): the file, the reader's faults, the
reports a replay writes, the comparison of two recordings, and the dashboard on a recording."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busmon.probes.harness.gate import AwaitingStep
from busmon.probes.model import FailureNoted, PhaseStarted, RunFinished, Sample
from busmon.probes.recording.codec import FULL_EVERY, Encoder, encode_header
from busmon.probes.recording.reader import CUT_SHORT, RecordingError, open_recording
from busmon.probes.recording.records import VERSION, Ended, Header, Segment
from busmon.probes.recording.writer import Recorder
from tests import recorded
from tests.test_cli_robust import run_main

ROOT = Path(__file__).resolve().parents[1]
HEADER = Header("play", {"name": "recorded", "backend": "memory", "runs": [{"name": "run-1", "hold_s": 0}],
                         "probes": {"interval_ms": 100}}, "x.toml", "memory://", "0.1.0", "3.11", "linux",
                "2026-12-07T00:00:00+00:00")
LEAKY = """name = "recorded"
[probes]
settle_timeout_s = 0.3
[[runs]]
name = "first"
messages = 400
[[runs]]
name = "second"
messages = 400
"""


def record(path: Path, events: list[object], ended: Ended | None = Ended(False)) -> Recorder:
    recorder = Recorder(path, HEADER)
    for e in events:
        recorder.put(e)
    if ended is not None:
        recorder.close(ended)
    return recorder


def replayed(path: Path) -> list[object]:
    return [e for _, e in open_recording(path).events()]


def sample(run: str, components: dict[str, int]) -> Sample:
    return dataclasses.replace(recorded.sample("load", 1.0, 10, 1.0, 1.0, 1), run=run, by_component=components)


def write_timed(path: Path, timed: list[tuple[float, object]], ended: Ended | None = Ended(False)) -> None:
    """A recording with the times given (the format as documented), not the times of writing."""
    encoder = Encoder()
    lines = [encode_header(HEADER)] + [encoder.encode(t, e) for t, e in timed]
    if ended is not None:
        lines.append(encoder.encode(timed[-1][0] if timed else 0.0, ended))
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


# -- the file --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
def test_every_event_comes_back_equal(tmp_path: Path, name: str) -> None:
    events = [*recorded.events(), AwaitingStep("run-2", "baseline"), FailureNoted("run-2", "load", "boom", "deadline"),
              Segment("nats", "nats://127.0.0.1:4222")]
    path = tmp_path / name
    record(path, events, Ended(True, ({"logger": "aiokafka", "level": "WARNING", "count": 3, "message": "m"},)))
    rec = open_recording(path)
    assert rec.header == HEADER and rec.compressed == name.endswith(".gz")
    assert [e for _, e in rec.events()] == events
    assert rec.ended == Ended(True, ({"logger": "aiokafka", "level": "WARNING", "count": 3, "message": "m"},))
    assert not rec.cut_short and not rec.problems


def test_times_say_when_each_event_came_and_lines_are_written_as_they_come(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    recorder = Recorder(path, HEADER)
    m0 = time.monotonic()
    recorder.put(PhaseStarted("run-1", "baseline", 0.0))
    m1 = time.monotonic()
    wait_for_line(path, '"phase":"baseline"')  # written and flushed before the command ends
    m2 = time.monotonic()
    recorder.put(PhaseStarted("run-1", "create", 0.1))
    m3 = time.monotonic()
    recorder.close(Ended(False))
    (t1, _), (t2, _) = list(open_recording(path).events())
    assert m2 - m1 - 1e-3 <= t2 - t1 <= m3 - m0 + 1e-3


def test_components_are_written_as_changes_and_read_back_whole(tmp_path: Path) -> None:
    """100 components cost ~3 KB a sample: after the first, only what changed is written."""
    runs = []
    for i in range(FULL_EVERY + 5):
        comps = {f"bus.c{k}": 5 for k in range(100)}
        comps["bus.c0"] = i  # one changes every sample
        if i % 7 == 0:
            comps.pop("bus.c1")  # one comes and goes
        runs.append(sample("run-1", comps))
    runs.insert(50, sample("run-2", {"other": 1}))  # another run's samples between: their own deltas
    path = tmp_path / "r.jsonl"
    record(path, runs)
    assert replayed(path) == runs
    lines = path.read_text().splitlines()[1:]
    whole = [json.loads(x) for x in lines if '"by_component":' in x]
    assert len(whole) == 3  # run-1's first and its FULL_EVERY-th, run-2's first
    assert max(len(x) for x in lines if "by_component_changes" in x) < 700


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    """A bus that names its task after its password: the leftover's name carries the secret
    through the events; the recording, its replay and its report never show it."""
    marker = "MARKER-pw-9f3e1"
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'name = "secret"\n[bus]\npassword = "{marker}"\n[probes]\nsettle_timeout_s = 0.2\n'
                        '[[runs]]\nname = "r"\nmessages = 50\n')
    rec = tmp_path / "r.jsonl.gz"
    code, out, err = run_main(["play", str(scenario), "--headless", "--bus", "tests.leaky_buses:SecretInTaskName",
                               "--record", str(rec)], cwd=ROOT)
    assert code == 1, err  # the task leaked
    text = gzip.decompress(rec.read_bytes()).decode()
    assert marker not in text and "bus.leaky.conn:***" in text
    code, out, err = run_main(["replay", str(rec), "--headless", "--report", str(tmp_path / "r.md")], cwd=ROOT)
    assert code == 1 and marker not in out + err + (tmp_path / "r.md").read_text()


def test_a_recording_path_that_cannot_be_written_is_one_line_before_any_run(tmp_path: Path) -> None:
    for path, says in ((tmp_path, "expected a file, got a folder"),
                       (tmp_path / "no" / "r.jsonl", "does not exist")):
        code, out, err = run_main(["play", str(ROOT / "sample_configs" / "quickstart.toml"), "--headless",
                                   "--record", str(path)])
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    code, out, err = run_main(["--record", str(tmp_path / "r.jsonl"), "play", "x.toml"])
    assert code == 2 and "--record" in err and "only for the dashboard" in err


# -- replay: the same summary and reports ------------------------------------------------------

@pytest.fixture(scope="module")
def leaky_recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A live run of a bus that leaks, recorded, with its JSON and Markdown reports."""
    d = tmp_path_factory.mktemp("rec")
    (d / "s.toml").write_text(LEAKY)
    code, out, err = run_main(["play", "s.toml", "--headless", "--bus", "tests.leaky_buses:TaskLeaker",
                               "--record", "r.jsonl", "--report", "live.json", "--report", "live.md"], cwd=d)
    assert code == 1, err
    assert "recorded to r.jsonl" in err
    return d, d / "r.jsonl", d / "live.json"


def test_replay_headless_writes_the_reports_the_live_run_wrote(leaky_recording: tuple[Path, Path, Path]) -> None:
    d, rec, live = leaky_recording
    code, out, err = run_main(["replay", "r.jsonl", "--headless", "--report", "again.json", "--report", "again.md"],
                              cwd=d)
    assert code == 1, err  # the verdict's exit code, as the live run's
    assert json.loads((d / "again.json").read_text()) == json.loads(live.read_text())
    assert (d / "again.md").read_text() == (d / "live.md").read_text()
    assert "LEAKED run first" in err and "bus.leaky.heartbeat" in out  # the run lines, the leak lines


def test_replay_off_screen_takes_the_screenshots(leaky_recording: tuple[Path, Path, Path]) -> None:
    d, rec, live = leaky_recording
    code, out, err = run_main(["replay", "r.jsonl", "--headless", "--screenshots", "shots"], cwd=d)
    assert code == 1, err
    shots = sorted(p.name for p in (d / "shots").iterdir())
    assert "01-first-1-baseline.svg" in shots and any(s.endswith("verdict.svg") for s in shots)
    first, last = (d / "shots" / "01-first-1-baseline.svg").read_text(), (d / "shots" / shots[-1]).read_text()
    # each picture says where in the recording it was taken: the first is not already at the end
    assert "REPLAY" in first and "END" not in first and "END" in last


def test_replay_against_names_what_is_new_and_what_is_gone(leaky_recording: tuple[Path, Path, Path]) -> None:
    d, leaky, _ = leaky_recording
    code, out, err = run_main(["play", "s.toml", "--headless", "--bus", "tests.leaky_buses:Wrapped",
                               "--record", "clean.jsonl"], cwd=d)
    assert code == 0, err
    code, out, err = run_main(["replay", "clean.jsonl", "--against", "r.jsonl"], cwd=d)
    assert code == 0, err  # A is clean
    assert "gone in A task bus.leaky.heartbeat" in " ".join(out.split())
    assert "A no longer leaks 2 leftovers that B did, and leaks nothing new" in " ".join(out.split())
    code, out, err = run_main(["replay", "r.jsonl", "--against", "clean.jsonl"], cwd=d)
    assert code == 1 and "A leaks 2 leftovers that B did not" in " ".join(out.split())
    code, out, err = run_main(["replay", "r.jsonl", "--against", "r.jsonl"], cwd=d)
    assert code == 1 and "the same leftovers leak in both" in " ".join(out.split())


def test_a_compare_recording_replays_as_the_compare_table(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text('name = "cmp"\n[probes]\nsettle_timeout_s = 0.2\n[[runs]]\nname = "r"\n'
                                     'messages = 100\n')
    code, out, err = run_main(["compare", "s.toml", "--backends", "memory,tests.leaky_buses:Wrapped",
                               "--record", "c.jsonl", "--report", "live.json"], cwd=tmp_path)
    assert code == 0, err
    code, out2, err = run_main(["replay", "c.jsonl", "--headless", "--report", "again.json"], cwd=tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads((tmp_path / "live.json").read_text())
    assert "busmon compare: cmp" in out2 and "Wrapped" in out2


def test_a_dashboard_session_quit_with_q_replays_with_the_exit_code_it_had(tmp_path: Path) -> None:
    """q in the live dashboard interrupts the run under way: busmon exits with the verdict of
    what it found (0 here), not 130; its replay says the same."""
    events = recorded.events("settle")
    interrupted = dataclasses.replace(recorded.events()[-1].result, verdict="interrupted", leftovers=(), memory={},
                                      failure={"phase": "load", "kind": "interrupted", "message": "q"})
    path = tmp_path / "r.jsonl"
    header = dataclasses.replace(HEADER, command="dashboard", scenario_path=None)
    encoder = Encoder()
    lines = [encode_header(header)] + [encoder.encode(0.1 * i, e) for i, e in enumerate([*events, RunFinished(interrupted)])]
    path.write_text("".join(json.dumps(x) + "\n" for x in [*lines, encoder.encode(9.0, Ended(False))]))
    code, out, err = run_main(["replay", "r.jsonl", "--headless"], cwd=tmp_path)
    assert code == 0, err


def test_against_counts_identical_leftovers_one_by_one() -> None:
    """Two subscriptions leave two identical tasks (FastStream without its stop, found by trying
    it): both are new, and a third against two is one new one."""
    from busmon.tui.against import changes

    leaked = recorded.events()[-1].result
    task = leaked.leftovers[0]
    twice = dataclasses.replace(leaked, leftovers=(task, dataclasses.replace(task, name="Task-35")))
    thrice = dataclasses.replace(leaked, leftovers=(*twice.leftovers, dataclasses.replace(task, name="Task-36")))
    clean = dataclasses.replace(leaked, leftovers=())
    assert [len(x) for x in changes(twice, clean)] == [2, 0]
    assert [len(x) for x in changes(thrice, twice)] == [1, 0]
    assert [len(x) for x in changes(clean, thrice)] == [0, 3]


def test_against_says_which_runs_only_one_recording_has() -> None:
    from busmon.probes.model import ScenarioResult
    from busmon.tui.against import verdict_line

    leaked = recorded.events()[-1].result
    a = ScenarioResult("s", (leaked,))
    b = ScenarioResult("s", (leaked, dataclasses.replace(leaked, name="main")))
    assert verdict_line(a, b) == ("A leaks nothing B did not; the same leftovers leak in both "
                                  "(in the runs both have; run main only in B)")


# -- a busmon killed while recording -----------------------------------------------------------

def written_so_far(path: Path) -> str:
    """What another process has written and flushed: a .gz stream is read up to its last sync point."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    return data.decode("utf-8", "replace")


def wait_for_line(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in written_so_far(path):
                return
        except (OSError, zlib.error):
            pass
        time.sleep(0.02)  # polling a file another process writes, with a deadline
    raise AssertionError(f"{text!r} never appeared in {path}")


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
def test_a_killed_busmon_leaves_a_recording_that_replays_to_where_it_stopped(tmp_path: Path, name: str) -> None:
    (tmp_path / "s.toml").write_text('name = "killed"\n[[runs]]\nname = "done"\nmessages = 200\n'
                                     '[[runs]]\nname = "cut"\nmessages = 100000000\nrate_per_s = 1000\n')
    path = tmp_path / name
    proc = subprocess.Popen([sys.executable, "-m", "busmon", "play", "s.toml", "--headless", "--record", name],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for_line(path, '"run":"cut","phase":"load"')
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    code, out, err = run_main(["replay", name, "--headless"], cwd=tmp_path)
    assert code == 130, err  # as an interrupted command: the runs that finished, and no more
    assert CUT_SHORT in " ".join(err.split())
    assert "CLEAN run done" in err and "run cut" in err


# -- bad input -------------------------------------------------------------------------------

def test_what_is_no_recording_is_one_line_and_exit_2(tmp_path: Path) -> None:
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"format": "busmon-recording", "version": VERSION + 1}) + "\n")
    cases = {
        "empty.jsonl": ("", "empty: not a busmon recording"),
        "toml.jsonl": ("name = 'x'\n", "not a busmon recording (its first line is not JSON)"),
        "other.jsonl": ('{"schema": 2}\n', "not a busmon recording"),
        "bad-header.jsonl": ('{"format": "busmon-recording", "version": 1}\n', "its first line is damaged"),
        "junk.gz": ("\x1f\x8bnot gzip at all", "cannot read it"),
    }
    for name, (text, says) in cases.items():
        (tmp_path / name).write_bytes(text.encode("latin-1"))
    for name, says in [*((n, s) for n, (_, s) in cases.items()), ("newer.jsonl", "is newer than this busmon reads"),
                       ("missing.jsonl", "no such file"), (".", "expected a recording file, got a folder")]:
        code, out, err = run_main(["replay", name, "--headless"], cwd=tmp_path)
        assert code == 2, (name, err)
        assert len(err.strip().splitlines()) == 1 and says in err, (name, err)
        assert "Traceback" not in err


def test_a_damaged_line_is_named_and_the_rest_replays(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    record(path, recorded.events())
    lines = path.read_text().splitlines()
    lines[5] = lines[5][:20]  # cut inside an object
    lines[8] = json.dumps({**json.loads(lines[8]), "tasks": "many"}) if '"tasks"' in lines[8] else '{"t": 1}'
    path.write_text("\n".join(lines) + "\n")
    code, out, err = run_main(["replay", "r.jsonl", "--headless"], cwd=tmp_path)
    assert code == 1, err  # the run's verdict still: leaked
    said = " ".join(err.split())
    assert "r.jsonl:6: not JSON" in said and "r.jsonl:9:" in said


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                    HealthCheck.function_scoped_fixture])
@given(body=st.lists(st.one_of(
    st.text(max_size=80),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                 lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                 max_leaves=12).map(json.dumps),
    st.fixed_dictionaries({"t": st.floats(), "type": st.sampled_from(["sample", "run_finished", "snapshot",
                                                                      "phase_started", "ended", "segment"])},
                          optional={"run": st.text(max_size=5), "phase": st.text(max_size=5),
                                    "result": st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
                                    "by_component_changes": st.dictionaries(st.text(max_size=4), st.none() | st.integers())
                                    }).map(json.dumps),
), max_size=12), cut=st.integers(min_value=0, max_value=40))
def test_the_reader_never_fails_on_what_follows_a_header(tmp_path: Path, body: list[str], cut: int) -> None:
    path = tmp_path / "fuzz.jsonl"
    rest = "\n".join(body)
    path.write_text(json.dumps(encode_header(HEADER)) + "\n" + rest[: max(0, len(rest) - cut)], encoding="utf-8")
    rec = open_recording(path)
    events = list(rec.events())
    assert all(isinstance(t, float) for t, _ in events)
    assert rec.cut_short or rec.ended is not None


def test_the_reader_refuses_rather_than_raises_on_any_first_line() -> None:
    @settings(max_examples=100, deadline=None, database=None)
    @given(first=st.binary(max_size=60))
    def check(first: bytes) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "x.jsonl"
            path.write_bytes(first + b"\n")
            try:
                open_recording(path)
            except RecordingError as exc:
                assert str(exc).startswith(str(path)) and "\n" not in str(exc)

    check()


# -- the dashboard on a recording ---------------------------------------------------------------

async def test_dashboard_replay_keys_speed_jump_pause_and_end(tmp_path: Path) -> None:
    from busmon.tui.app import BusmonApp
    from busmon.tui.replay_controller import ReplayController

    path = tmp_path / "r.jsonl"
    events = recorded.events()  # at the times they carry (7 s of a run): the clock matters here
    write_timed(path, [(e.t_s if hasattr(e, "t_s") else 7.1, e) for e in events])
    controller = ReplayController(open_recording(path))
    app = BusmonApp(controller)
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 10
        while not app.state.replay and time.monotonic() < deadline:
            await pilot.pause(0.05)
        assert app.state.replay.startswith("REPLAY 0:00 / 0:07 ×1"), app.state.replay
        await pilot.press("plus", "plus")
        assert controller.speed == 4 and app.state.replay.endswith("×4")
        await pilot.press("space")
        at = controller.position()
        assert controller.paused and controller.position() == at  # the clock stops with the display
        await pilot.press("space")
        await pilot.press("n")  # the next phase: the clock jumps to its start and waits there
        at = controller.position()
        assert at >= 0.5 and app.paused and controller.paused and app.state.paused
        await pilot.press("space")
        for _ in range(6):
            await pilot.press("minus")
        assert controller.speed == 1 / 8  # at this pace the end is a minute away
        await pilot.press("end")  # the leftovers table has the focus: end is still the replay's
        assert controller.position() == float("inf")
        deadline = time.monotonic() + 10
        while app.done is None and time.monotonic() < deadline:
            await pilot.pause(0.05)
        assert app.done is not None and app.done.result.verdict == "leaked"
        assert app.state.replay.endswith("END") and app.results[-1].name == "run-1"
        await pilot.press("minus")
        assert controller.speed == 1 / 8 and "slowest" in app.state.note
