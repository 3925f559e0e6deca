"""Reports: JSON (``"schema": 2``, the contract other tools read) and Markdown (the
post-mortem's tables, done right).

Schema 2 (busmon 0.9): leftovers gain the kinds ``socket``, ``fd`` and ``process``; each run
gains ``stalls`` (the event loop blocked: phase, duration, blocking call, stack) and ``memory``
(RSS per phase and its drift, objects retained after settling by type, ``retained`` findings);
phase snapshots gain ``sockets``, ``fds``, ``processes``, ``rss_mb`` and ``loop_lag_ms``. A run
whose memory grows with the load is ``leaked``. Everything schema 1 had is unchanged.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from busmon.bus.secrets import scrub, scrub_tree
from busmon.probes.verdict.findings import alloc_label, callback_frames, kib, leaks
from busmon.probes.model import RunResult, ScenarioResult, signed

SCHEMA = 2


def busmon_version() -> str:
    try:
        return metadata.version("busmon")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def to_dict(result: ScenarioResult, scenario_path: str | None = None) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "busmon_version": busmon_version(),
        "scenario": result.scenario,
        "scenario_path": scenario_path,
        "verdict": result.verdict,
        "interrupted": result.interrupted,
        "runs": [r.as_dict() for r in result.runs],
        "logs": [line.as_dict() for line in result.logs],
    }


#: fields whose values are busmon's own vocabulary: never scrubbed (a password that is also the
#: word "kafka" or "failed" is masked everywhere else, but must not change the report's format)
FIXED_FIELDS = frozenset({"backend", "verdict", "state", "kind", "phase", "level", "schema"})


def to_json(result: ScenarioResult, scenario_path: str | None = None) -> str:
    """The report, with every secret scrubbed from its strings (see bus.secrets)."""
    return json.dumps(scrub_tree(to_dict(result, scenario_path), FIXED_FIELDS), indent=2)


def _delta(n: int, base: int) -> str:
    return signed(n - base)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


PHASE_HEADERS = ["phase", "tasks", "Δ baseline", "threads (Python / OS)", "Δ threads", "new since baseline",
                 "sockets (new)", "fds", "children", "rss MB", "loop lag p99 / max ms"]


def phase_rows(run: RunResult) -> list[list[Any]]:
    base = run.phase("baseline")
    b_tasks = base.tasks if base else 0
    b_threads = base.threads if base else 0
    rows = []
    for p in run.phases:
        label = p.phase
        if p.phase == "close":
            label = "close (naive: counted right after close returned)"
        elif p.phase == "shutdown" and run.backend == PROGRAM:
            label = "shutdown (naive: counted right when the main coroutine returned)"
        elif p.phase == "settle":
            label = f"settle (after waiting {run.settle_ms:g} ms, GC)"
        lag = p.loop_lag_ms
        rows.append([label, p.tasks, _delta(p.tasks, b_tasks), f"{p.threads} / {p.os_threads}",
                     _delta(p.threads, b_threads), p.new_tasks, p.sockets, p.fds, p.processes, f"{p.rss_mb:,.1f}",
                     f"{lag['p99_ms']:.1f} / {lag['max_ms']:.1f}" if lag else "–"])
    return rows


#: thread groups as a person reads them (the census groups threads by name, digits dropped)
THREAD_NAMES = {"main": "main (the process's own)", "Thread": "Thread-N (started without a name)"}


def component_rows(run: RunResult, threads: bool = False) -> list[list[Any]]:
    """Tasks by component (``bus.pool``, ``aiokafka``…) per phase; with ``threads``, the threads
    by name instead (the census keeps both in one mapping, threads as ``thread:<name>``)."""
    names: list[str] = []
    for p in run.phases:
        for c in p.by_component:
            if c.startswith("thread:") == threads and c not in names:
                names.append(c)
    cols = component_columns(run)
    by = {p.phase: p.by_component for p in run.phases}
    rows = []
    for c in names:
        label = THREAD_NAMES.get(c.removeprefix("thread:"), c.removeprefix("thread:")) if threads else c
        rows.append([f"`{label}`"] + [by.get(col, {}).get(c, 0) if col in by else "–" for col in cols])
    rows.sort(key=lambda row: -max((x for x in row[1:] if isinstance(x, int)), default=0))
    return rows


#: a program judged by ``busmon run``: its phases are its own marks, and it has no load of busmon's
PROGRAM = "program"


def component_columns(run: RunResult) -> list[str]:
    """The phases the component tables show: a played run's four, a program's every phase."""
    if run.backend == PROGRAM:
        return list(dict.fromkeys(p.phase for p in run.phases))
    return ["baseline", "load", "close", "settle"]


def program_summary(result: ScenarioResult) -> list[str]:
    """The summary table of ``busmon run``: one row per event loop the program ran."""
    return _table(
        ["run", "verdict", "naive shutdown Δ tasks", "settled Δ tasks", "leaked", "exited", "ignored",
         "settle ms", "verdict ms", "stalls", "rss Δ MB"],
        [[r.name, r.verdict, signed(r.task_delta("shutdown")), signed(r.task_delta("settle")), len(leaks(r)),
          r.count("exited"), r.count("ignored"), f"{r.settle_ms:g}", f"{r.verdict_ms:g}", stall_cell(r),
          rss_drift_cell(r)] for r in result.runs])


def to_markdown(result: ScenarioResult, scenario_path: str | None = None) -> str:
    lines = [f"# busmon report: {result.scenario}", ""]
    lines.append(f"Verdict: **{result.verdict}** · busmon {busmon_version()}"
                 + (f" · scenario `{scenario_path}`" if scenario_path else ""))
    lines.append("")
    programs = bool(result.runs) and all(r.backend == PROGRAM for r in result.runs)
    lines += program_summary(result) if programs else _table(
        ["run", "backend", "verdict", "messages", "lost", "dup", "reord", "deliver/s", "p50 ms",
         "p99 ms", "naive close Δ tasks", "settled Δ tasks", "leaked", "exited", "ignored", "settle ms",
         "stalls", "rss Δ MB"],
        [[r.name, r.backend, r.verdict, f"{r.delivery.get('published', 0):,}", f"{r.delivery.get('lost', 0):,}",
          f"{r.delivery.get('duplicated', 0):,}", f"{r.delivery.get('reordered', 0):,}",
          f"{r.throughput.get('deliver_per_s', 0):,.0f}",
          r.throughput.get("latency_ms", {}).get("p50", "–"),
          r.throughput.get("latency_ms", {}).get("p99", "–"),
          signed(r.task_delta("close")), signed(r.task_delta("settle")), len(leaks(r)), r.count("exited"),
          r.count("ignored"), f"{r.settle_ms:g}", stall_cell(r), rss_drift_cell(r)] for r in result.runs],
    )
    if any(r.drift for r in result.runs) and not programs:
        lines += ["", "Drift against the first run's baseline (accumulation across runs): "
                  + ", ".join(f"{r.name}: {r.drift.get('tasks', 0)} tasks / {r.drift.get('threads', 0)} threads"
                              for r in result.runs if r.drift)]
    for r in result.runs:
        program = r.backend == PROGRAM
        title = f"`{r.name}`: {r.verdict}" if program else f"Run `{r.name}` on {r.backend}: {r.verdict}"
        lines += ["", f"## {title}", ""]
        if r.target and r.target != r.backend:
            lines += [f"Target `{r.target}`.", ""]
        if r.error:
            lines += [f"**Failure:** {r.error}", ""]
            lines += failure_lines(r)
        lines += [f"_{note}_" for note in r.notes] + ([""] if r.notes else [])
        lines += ["### Tasks, threads and resources by phase", ""]
        lines += _table(PHASE_HEADERS, phase_rows(r))
        lines += ["", "### Where the tasks come from", ""]
        columns = component_columns(r)
        lines += _table(["component", *columns], component_rows(r))
        if thread_rows := component_rows(r, threads=True):
            lines += ["", "### Threads by name (Python threads; the OS count is in the phase table)", ""]
            lines += _table(["thread", *columns], thread_rows)
        at_verdict = any(n.startswith("judged from the dashboard") or n.startswith("judged at the mark") for n in r.notes)
        lines += ["", ("### Leftovers at the verdict" if at_verdict else "### Leftovers at shutdown") if program
                  else "### Leftovers after close", ""]
        if not r.leftovers:
            lines += ["Nothing new was alive when the main coroutine returned." if program
                      else "Nothing new was alive when close returned."]
        else:
            lines += _table(
                ["state", "kind", "name", "component", "exited after ms", "detail"],
                [[(f"**{x.state}**" if x.state in ("leaked", "destroyed") else x.state), x.kind, f"`{x.name}`",
                  f"`{x.component}`", "–" if x.exited_after_ms is None else x.exited_after_ms,
                  x.detail.replace("|", "\\|")] for x in r.leftovers])
            for x in r.leftovers:
                if x.state in ("leaked", "destroyed") and (x.stack or x.created_at):
                    lines += ["", f"<details><summary>stack of {x.state} {x.kind} <code>{x.name}</code></summary>",
                              "", "```", *x.stack, *( [f"created at {x.created_at}"] if x.created_at else []),
                              "```", "</details>"]
        if not program:  # a program's memory is its RSS per phase, in the table above
            lines += ["", "### Memory", ""] + memory_lines(r)
        elif (kept := r.memory.get("retained_since_baseline")) is not None:
            lines += ["", "### Objects made since the baseline, still held at the verdict (--retained)", ""]
            lines += _table(["type", "count", "KiB"], [[f"`{x['type']}`", f"{x['count']:,}", kib(x["size_bytes"])]
                                                      for x in kept]) if kept else ["None."]
        lines += ["", "### Event-loop stalls", ""] + stall_lines(r)
        if program:
            continue
        d = r.delivery
        lines += ["", "### Delivery", "",
                  f"sent {d.get('sent', 0):,} · received {d.get('received', 0):,} · lost {d.get('lost', 0):,}"
                  f" · duplicated {d.get('duplicated', 0):,} · reordered {d.get('reordered', 0):,}"]
        t = r.throughput
        lat = t.get("latency_ms", {})
        lines += [f"publish {t.get('publish_per_s', 0):,.0f}/s · deliver {t.get('deliver_per_s', 0):,.0f}/s"
                  + (f" · latency p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, max {lat['max']} ms"
                     if lat else "")]
    if result.interrupted:
        lines += ["", "_Interrupted (Ctrl-C): the runs above are those played until then._"]
    if result.logs:
        lines += ["", "## Library log lines (counted, each kind once)", ""]
        lines += _table(["logger", "level", "count", "first message"],
                        [[f"`{x.logger}`", x.level, f"{x.count:,}", x.message.replace("|", "\\|")[:300]]
                         for x in result.logs])
    return "\n".join(lines) + "\n"


def stall_cell(r: RunResult) -> str:
    """``2 (worst 251 ms)``, ``0``."""
    worst = r.worst_stall()
    return "0" if worst is None else f"{len(r.stalls)} (worst {worst['duration_ms']:,.0f} ms)"


def rss_drift_cell(r: RunResult) -> str:
    drift = r.memory.get("rss_drift_mb")
    return "–" if drift is None else f"{drift:+,.1f}"


def memory_lines(r: RunResult) -> list[str]:
    """RSS per phase, the retained findings, and what the run left alive by type (Markdown)."""
    m = r.memory
    if not m:
        return ["Not measured."]
    out = []
    rss = m.get("rss_mb") or {}
    if rss:
        out.append("RSS: " + " → ".join(f"{phase} {mb:,.1f} MB" for phase, mb in rss.items())
                   + f" (drift against the first run's baseline {rss_drift_cell(r)} MB)")
        out.append("")
    findings = r.retained()
    if findings:
        out += ["**Retained, growing with the load:**", ""]
        out += _table(["type", "count", "per envelope", "size", "held by", "allocated at"],
                      [[f"`{f['type']}`", f"{f['count']:,}", f"{f['per_envelope']:.2f}", kib(f["size_bytes"]),
                        (f.get("held_by") or "unknown").replace("|", "\\|"), alloc_label(f.get("allocated_at")) or "–"]
                       for f in findings])
        out.append("")
    else:
        out += ["Nothing the run created grows with the envelopes sent"
                + (" (but see what was set aside below)." if m.get("ignored") else "."), ""]
    if m.get("ignored"):
        out += ["Grew with the load, set aside:", ""]
        out += _table(["type", "count", "held by", "why"],
                      [[f"`{f['type']}`", f"{f['count']:,}", (f.get("held_by") or "unknown").replace("|", "\\|"),
                        f.get("reason", "")] for f in m["ignored"]])
        out.append("")
    types = m.get("types") or []
    if types:
        out += [f"Objects the run created still alive after settling (busmon's own records excluded): "
                f"{m.get('objects', 0):,} objects, {kib(m.get('size_bytes', 0))}; largest types:", ""]
        out += _table(["type", "count", "size", "grew during load"],
                      [[f"`{t['type']}`", f"{t['count']:,}", kib(t["size_bytes"]), f"{t['growth']:,}"] for t in types])
    if m.get("top_sites"):
        out += ["", "Where the retained memory was allocated (tracemalloc):", ""]
        out += _table(["site", "size", "count"], [[site, kib(size), f"{n:,}"] for site, size, n in m["top_sites"]])
    return out


def stall_lines(r: RunResult) -> list[str]:
    if not r.stalls:
        return ["None: the event loop never stopped answering for as long as the stall threshold."]
    out = _table(["phase", "blocked ms", "blocking call", "component"],
                 [[s["phase"], f"{s['duration_ms']:,.0f}", f"`{s.get('blocking') or 'unknown'}`", f"`{s.get('component')}`"]
                  for s in r.stalls])
    worst = r.worst_stall()
    if worst and worst.get("stack"):
        out += ["", f"<details><summary>stack during the longest stall ({worst['duration_ms']:,.0f} ms)</summary>",
                "", "```", *callback_frames(worst["stack"]), "```", "</details>"]
    return out


def failure_lines(run: RunResult) -> list[str]:
    """Where the run was stuck when its deadline passed, and the broker's state (Markdown)."""
    f = run.failure or {}
    out = []
    kind = f.get("kind") or ""
    if kind == "deadline" and f.get("deadline_s"):
        kind = f"deadline of {f['deadline_s']:g} s passed"
    facts = [f"phase `{f['phase']}`" if f.get("phase") else "", kind,
             f"broker: {f['broker']}" if f.get("broker") else "",
             f"then close: {f['close']}" if f.get("close") else ""]
    facts = [x for x in facts if x]
    if facts:
        out += [" · ".join(facts), ""]
    if f.get("stack"):
        out += [f"Stuck in `{f.get('component') or 'unknown'}`:", "", "```", *f["stack"], "```", ""]
    return out


REPORT_SUFFIXES = (".json", ".md", ".markdown")


def write_report(result: ScenarioResult, path: Path, scenario_path: str | None = None) -> None:
    """Write by extension: .json or .md."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        path.write_text(to_json(result, scenario_path), encoding="utf-8")
    elif suffix in (".md", ".markdown"):
        path.write_text(scrub(to_markdown(result, scenario_path)), encoding="utf-8")
    else:
        raise ValueError(f"{path}: expected a report path ending in .json or .md")
