"""How the stalls of a watched event loop read in a verdict, for ``watch()`` and the pytest plugin.

A stall is the loop running nothing for ``stall_ms`` or more (see :mod:`busmon.probes.observe.loopwatch`): a
warning, unless ``fail_on_stall_ms`` says one that long fails. Each is named by the call that
held the loop (``test_x.py:12 in test_blocks: time.sleep(0.3)``), sampled while it held it.
"""

from __future__ import annotations

from typing import Sequence

from busmon.probes.verdict.findings import callback_frames
from busmon.probes.observe.loopwatch import Stall

#: what the loop was doing, by the phase a Watch sets
PHASES = {"run": "while the watched code ran", "settle": "while busmon waited for leftovers to exit",
          "setup": "while the test's fixtures were set up", "teardown": "while the test's fixtures were torn down"}
#: innermost frames of a stall's callback shown in a report
SHOWN_FRAMES = 12


def failing(stalls: Sequence[Stall], fail_on_stall_ms: float | None) -> list[Stall]:
    """The stalls that fail: at least ``fail_on_stall_ms`` long (none when it is None)."""
    if fail_on_stall_ms is None:
        return []
    return [s for s in stalls if s.duration_ms >= fail_on_stall_ms]


def where(stall: Stall) -> str:
    return f" at {stall.blocking}" if stall.blocking else " the blocking call not seen"


def short_line(stalls: Sequence[Stall]) -> str:
    """``the event loop was blocked 301 ms at test_x.py:12 in test_blocks: time.sleep(0.3)``
    (the longest stall), ``and 2 more stalls`` after it when there were."""
    worst = max(stalls, key=lambda s: s.duration_ms)
    more = len(stalls) - 1
    tail = f", and {more} more stall{'s' if more > 1 else ''}" if more else ""
    return f"the event loop was blocked {worst.duration_ms:,.0f} ms{where(worst)}{tail}"


def stall_report(stalls: Sequence[Stall], stall_ms: int | None, fail_on_stall_ms: float | None,
                 during: str = "", rule: str = "") -> str:
    """Every stall, longest first, with the call that held the loop and its stack (innermost
    last); the first line says how many, from what length they are told, and what fails.
    ``during``: what the watched code was, for its stalls (``during the test``)."""
    if not stalls:
        return ""
    n = len(stalls)
    bad = failing(stalls, fail_on_stall_ms)
    if rule:
        pass
    elif fail_on_stall_ms is None:
        rule = "a warning (fail_on_stall_ms is not set)"
    else:
        rule = (f"{len(bad)} of {n} at least fail_on_stall_ms = {fail_on_stall_ms:g} ms: a failure" if bad
                else f"none reaches fail_on_stall_ms = {fail_on_stall_ms:g} ms: a warning")
    lines = [f"busmon: {n} stall{'s' if n != 1 else ''} of the event loop (it ran nothing for "
             f"{stall_ms or '?'} ms or more); {rule}"]
    for i, s in enumerate(sorted(stalls, key=lambda s: -s.duration_ms), 1):
        phase = (during or PHASES["run"]) if s.phase == "run" else PHASES.get(s.phase, f"in {s.phase}")
        lines.append(f"stall {i}: {s.duration_ms:,.0f} ms, {phase},{where(s)}")
        frames = callback_frames(s.stack)[-SHOWN_FRAMES:]
        if frames:
            lines.append("  stack (innermost last):")
            lines += [f"    {f}" for f in frames]
    return "\n".join(lines)
