"""The dashboard header's model, without Textual: a pure function of events and key presses."""

from __future__ import annotations

from dataclasses import replace
from functools import reduce as fold

from busmon.probes.harness.gate import AwaitingStep
from busmon.probes.model import FailureNoted, PhaseStarted, Sample
from busmon.probes.model import RunFinished
from tests import recorded
from busmon.tui.state import DashState, Filtered, IntervalSet, NextPressed, Paused, RunDone, Viewing, reduce


def play(*events, state: DashState | None = None) -> DashState:
    return fold(reduce, events, state or DashState(backend="nats", target="nats://bob:***@h:4222", runs_total=4))


def sample(run: str, phase: str, t_s: float) -> Sample:
    return replace(recorded.sample(phase, t_s, 260, 5000, 4990, 100), run=run)


def result():
    return next(e.result for e in recorded.events() if isinstance(e, RunFinished))


def test_where_you_are_run_phase_and_time():
    st = play(AwaitingStep("low", "baseline"), PhaseStarted("low", "baseline", 0.0), PhaseStarted("low", "create", 0.4),
              sample("low", "create", 1.5))
    assert st.run_label() == "run 1/4 low" and st.lit == "create" and st.done == {"baseline"}
    assert st.elapsed_s == 1.5 and st.next_key() == "n: after create"


def test_settle_stays_lit_after_the_verdict_and_n_offers_the_next_run():
    r = result()
    st = play(PhaseStarted(r.name, "baseline", 0.0), PhaseStarted(r.name, "settle", 2.0), RunDone(r),
              AwaitingStep("next", "baseline"))
    assert st.lit == "settle" and "settle" in st.done and st.finished
    assert st.next_key() == "n → next run" and st.verdicts == ((r.name, r.verdict),)


def test_the_next_run_counts_on_and_its_clock_starts_again():
    r = result()
    st = play(PhaseStarted(r.name, "baseline", 0.0), sample(r.name, "load", 9.0), RunDone(r),
              PhaseStarted("high", "baseline", 0.2))
    assert st.run_label() == "run 2/4 high" and st.elapsed_s == 0.0 and not st.finished and st.done == frozenset()
    st = play(sample("high", "baseline", 1.7), state=st)  # the run's clock ran while n was awaited: not counted
    assert st.elapsed_s == 1.5


def test_n_too_early_says_when_it_will_act():
    st = play(PhaseStarted("low", "baseline", 0.0), PhaseStarted("low", "load", 1.0), NextPressed(False))
    assert st.note == "n kept: the next phase starts when load ends"
    assert play(AwaitingStep("low", "close"), NextPressed(True), state=st).note == ""


def test_paused_filtered_and_the_sampling_limit_are_lasting_marks():
    st = play(Paused(True), Filtered("  pool "), IntervalSet(50, "fastest"))
    assert st.paused and st.filter == "pool" and st.interval_ms == 50
    assert st.note == "sampling every 50 ms: the fastest"
    st = play(Paused(False, 7), state=st)
    assert not st.paused and st.note == "resumed: 7 samples recorded while paused" and st.filter == "pool"


def test_a_failure_is_kept_with_its_phase_until_the_next_run():
    st = play(PhaseStarted("low", "baseline", 0.0), PhaseStarted("low", "create", 0.1),
              FailureNoted("low", "create", "nats 127.0.0.1:4222: authentication failed (user bob)"),
              PhaseStarted("low", "close", 0.2))
    assert st.failed == ("create", "nats 127.0.0.1:4222: authentication failed (user bob)") and st.lit == "close"
    assert st.next_key() == "n: after the verdict (busmon closes and settles on its own)"
    assert play(PhaseStarted("high", "baseline", 0.0), state=st).failed is None


def test_the_open_ended_session_names_runs_by_number():
    st = play(PhaseStarted("run-3", "baseline", 0.0), state=DashState(run_index=2))
    assert st.run_label() == "run-3"


def test_the_clock_stops_at_the_verdict():
    r = result()
    st = play(PhaseStarted(r.name, "baseline", 0.0), sample(r.name, "settle", 7.0), RunDone(r),
              sample(r.name, "settle", 9.0))
    assert st.elapsed_s == 7.0


def test_a_sample_of_another_run_does_not_move_the_clock():
    st = play(PhaseStarted("low", "baseline", 0.0), sample("low", "load", 2.0), sample("old", "settle", 30.0))
    assert st.elapsed_s == 2.0


def test_a_finished_run_shown_again_is_said_until_esc_or_the_next_run():
    from busmon.tui.state import Viewing

    st = play(PhaseStarted("high", "baseline", 0.0), Viewing("low", 1, 2))
    assert st.viewing == "1/2 low" and st.next_key() == "esc → the live run"
    assert play(Viewing(""), state=st).viewing == ""
    assert play(PhaseStarted("next", "baseline", 0.0), state=st).viewing == ""


def test_the_panels_follow_the_run_and_end_where_it_ended():
    """Phase snapshots, the newest reading, tasks by component with their peaks (threads left
    out), and at the verdict the run's result and its settled components, not a load sample."""
    events = [e for e in recorded.events() if not isinstance(e, RunFinished)]
    st = play(*events)
    assert [s.phase for s in st.snapshots] == ["baseline", "create", "subscribe", "load", "close", "settle"]
    assert st.latest is not None and st.latest.phase == "settle"
    assert dict(st.peaks)["bus.pool"] == 256 and "bus.pool" not in dict(st.components)
    r = result()
    st = play(RunDone(r), sample(r.name, "settle", 9.0), state=st)  # a reading after the verdict
    assert st.final is r and dict(st.components) == {k: v for k, v in r.phase("settle").by_component.items()
                                                     if not k.startswith("thread:")}
    assert st.latest.t_s != 9.0
    st = play(PhaseStarted("next", "baseline", 0.0), state=st)
    assert (st.snapshots, st.latest, st.final, st.components, st.peaks) == ((), None, None, (), ())


def test_the_banner_says_what_each_moment_is_and_keeps_a_failure_said():
    from busmon.tui.state import FIRST_BASELINE

    st = play(AwaitingStep("low", "baseline"))
    assert st.banner == ("waiting", FIRST_BASELINE)
    st = play(PhaseStarted("low", "baseline", 0.0), PhaseStarted("low", "load", 1.0), state=st)
    assert st.banner == ("waiting", "run low: load: publishing and waiting for every delivery")
    st = play(AwaitingStep("low", "close"), state=st)
    assert st.banner == ("waiting", "run low: load done · n starts close")
    failed = play(FailureNoted("low", "load", "kafka 127.0.0.1:9092 unreachable"), PhaseStarted("low", "close", 2.0),
                  PhaseStarted("low", "settle", 2.1), state=st)
    assert failed.banner == ("failing", "load", "kafka 127.0.0.1:9092 unreachable", "error")
    done = play(RunDone(result()), state=failed)
    assert done.banner == ("verdict",)
    from busmon.probes.verdict import findings

    assert done.leftovers == tuple(findings.rows(done.final)) and len(done.leftovers) >= 4
    assert play(PhaseStarted("next", "baseline", 0.0), state=done).leftovers == ()


def test_what_the_filter_hides_is_said_while_it_hides_it_and_counted_in_words():
    r = result()
    n = len(play(RunDone(r)).leftovers)
    st = play(PhaseStarted(r.name, "baseline", 0.0), RunDone(r), Filtered("nomatch"))
    assert st.hidden_by_filter() == n and st.filter_word() == f'filter "nomatch" hides all {n} leftovers (esc clears it)'
    assert play(Filtered(""), state=st).filter_word() == ""  # esc: said no more, at once
    assert play(Filtered("sloppy"), state=st).filter_word() == 'filter "sloppy" (/ to change)'
    # the next run has no leftovers yet: an empty table is not the filter's doing
    assert play(PhaseStarted("run-2", "baseline", 9.0), state=st).hidden_by_filter() == 0
    # a finished run shown again: its own leftovers are what the filter hides
    one = (r.leftovers[0],)
    shown = play(Viewing("old", 1, 2, one), state=st)
    assert shown.filter_word() == 'filter "nomatch" hides the only leftover (esc clears it)'
    assert play(Viewing(), state=shown).hidden_by_filter() == n


def test_counts_are_said_in_the_singular_for_one():
    st = play(Paused(True), Paused(False, 1))
    assert st.note == "resumed: 1 sample recorded while paused"
    assert play(Paused(True), Paused(False, 2)).note == "resumed: 2 samples recorded while paused"


async def test_an_interrupted_run_is_called_interrupted_while_it_closes_never_failed() -> None:
    """Ctrl-C or q cuts a run short: the banner says INTERRUPTED at once, as the summary, the
    progress and the JSON do (issue 23: one name for an interrupted run)."""
    from textual.app import App, ComposeResult

    from busmon.tui.widgets.verdict import VerdictBanner

    st = play(PhaseStarted("low", "load", 1.0), FailureNoted("low", "load", "interrupted (Ctrl-C or quit)", "interrupted"))
    assert st.banner == ("failing", "load", "interrupted (Ctrl-C or quit)", "interrupted")

    class One(App):
        def compose(self) -> ComposeResult:
            yield VerdictBanner()

    async with One().run_test() as pilot:
        banner = pilot.app.query_one(VerdictBanner)
        banner.show_state(st.banner, None)
        text = str(banner.render())
        assert text.startswith("INTERRUPTED in load: interrupted") and "FAILED" not in text, text
        assert banner.has_class("-interrupted") and not banner.has_class("-failed")
