"""Every finding of a run in one list, for the screens: leftovers, retained memory, stalls.

The JSON report keeps them apart (``leftovers``, ``memory.retained``, ``stalls``); a person
looking at a run wants one list, worst first, each row with a kind, a name, an owner and,
when selected, its stack. Retained memory is a leak (it counts in the verdict); a stall is a
warning unless the scenario's ``fail_on_stall_ms`` made it fail the run.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from busmon.probes.model import Leftover, RunResult
from busmon.probes.observe.alloc_sites import short_path
from busmon.probes.observe.components import package_of


def retained_row(f: Mapping[str, Any]) -> Leftover:
    """A retained-memory finding as a row: ``Envelope ×2,000 (1.0 per envelope, 312 KiB)``;
    ``ignored`` when a rule or a runtime cache explains it (``reason``)."""
    held = f.get("held_by") or ""
    name = f"{_short_type(f['type'])} ×{f['count']:,}"
    detail = (f"{f.get('per_envelope', 0):.2f} per envelope sent, {kib(f.get('size_bytes', 0))} retained"
              + (f"; held by {held}" if held else "; who holds it is not known"))
    if f.get("reason"):
        detail += f" ({f['reason']})"
    return Leftover("memory", name, _component(held) or "unknown", "ignored" if f.get("reason") else "leaked",
                    None, (), alloc_label(f.get("allocated_at")), detail)


#: busmon.probes, where the load generator is: allocation sites name it as the other files do
_PROBES_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def alloc_label(site: str | None) -> str | None:
    """Where retained objects were allocated; busmon's load generator made the envelopes it
    publishes, which says where they came from, not who kept them (``held by`` does)."""
    if site and site.startswith(short_path(_PROBES_DIR) + "/"):
        return f"{site} (busmon's load generator made them; 'held by' says who kept them)"
    return site


def callback_frames(stack: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A stall's stack from the callback the loop was running (what follows asyncio's
    ``Handle._run``), without the thread and loop machinery above it."""
    cut = max((i for i, line in enumerate(stack) if line.startswith("asyncio/events.py")), default=-1)
    return tuple(stack[cut + 1:]) or tuple(stack)


def stall_row(s: Mapping[str, Any]) -> Leftover:
    """A stall as a row: ``loop blocked 251 ms in load``."""
    return Leftover("stall", f"loop blocked {s['duration_ms']:,.0f} ms in {s['phase']}", s.get("component") or "unknown",
                    "stalled", None, callback_frames(s.get("stack") or ()), None,
                    f"blocking call: {s['blocking']}" if s.get("blocking") else "blocking call not known")


def rows(run: RunResult) -> list[Leftover]:
    """Leaked and destroyed leftovers, then retained memory, then stalls, then the rest."""
    bad = [x for x in run.leftovers if x.state in ("leaked", "destroyed")]
    rest = [x for x in run.leftovers if x.state not in ("leaked", "destroyed")]
    memory = [retained_row(f) for f in run.retained()]
    stalls = [stall_row(s) for s in sorted(run.stalls, key=lambda s: -s["duration_ms"])]
    ignored = [retained_row(f) for f in run.memory.get("ignored", ())]
    return bad + memory + stalls + rest + ignored


def leaks(run: RunResult) -> list[Leftover]:
    """What makes the run ``leaked``: leftovers still alive (or destroyed) and retained memory."""
    return [x for x in rows(run) if x.state in ("leaked", "destroyed")]


def kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n >= 10 * 1024 else f"{n:,} B"


def _short_type(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _component(held_by: str) -> str:
    """The top package of the holder (``tests.leaky_buses.Hoarder.sent`` → ``tests``)."""
    head = held_by.split(" ", 1)[0]
    if head == "module":  # 'module x.y: NAME'
        head = held_by.split(" ", 2)[1] if held_by.count(" ") >= 1 else ""
    return package_of(head.rstrip(":")) if "." in head else ""
