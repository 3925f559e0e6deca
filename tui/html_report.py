"""One self-contained HTML file: the report's tables plus the dashboard's SVG screenshots inline."""

from __future__ import annotations

import html
import re
from pathlib import Path

from busmon.bus.secrets import scrub
from busmon.probes.model import ScenarioResult
from busmon.tui.report import PHASE_HEADERS, busmon_version, component_rows, memory_lines, phase_rows, stall_lines

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.clean { color: #0a7d32; } .leaked { color: #c01818; font-weight: bold; } .failed { color: #b36b00; }
.exited { color: #888; } .ignored { color: #a07800; font-style: italic; }
figure { margin: 1em 0; } figure svg { width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 90%; }
pre { background: #f6f6f6; padding: .5em; overflow-x: auto; }
"""


_WEB_FONT = re.compile(r',\s*url\("https?://[^"]*"\)\s*format\("[^"]*"\)')


def offline_svg(svg: str) -> str:
    """Drop the screenshot's web-font URLs (Fira Code from a CDN): the page must not reach the
    network; ``local()`` fonts and the monospace fallback remain."""
    return _WEB_FONT.sub("", svg)


def _table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c).strip('`'))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdownish(lines: list[str]) -> str:
    """The report's Markdown section lines as HTML: tables become tables, code blocks pre,
    the rest paragraphs (the same words in both reports, written once)."""
    out, table, code = [], [], None
    for line in lines + [""]:
        if code is not None:
            if line == "```":
                out.append("<pre>" + html.escape("\n".join(code)) + "</pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("|"):
            table.append([c.strip().strip("`").replace("\\|", "|") for c in line.strip("|").split(" | ")])
            continue
        if table:
            out.append(_table(table[0], [row for row in table[2:]]))
            table = []
        if line == "```":
            code = []
        elif line.startswith("<details>") or line == "</details>":
            out.append(line)
        elif line:
            out.append("<p>" + html.escape(line.replace("**", "").replace("`", "")) + "</p>")
    return "".join(out)


def to_html(result: ScenarioResult, scenario_path: str | None, shots: list[tuple[str, str]]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>busmon: {e(result.scenario)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>busmon report: {e(result.scenario)}</h1>",
             f"<p>Verdict: <b class='{result.verdict}'>{result.verdict}</b> · busmon {e(busmon_version())}"
             + (f" · scenario <code>{e(scenario_path)}</code>" if scenario_path else "") + "</p>"]
    for r in result.runs:
        parts.append(f"<h2>Run {e(r.name)} on {e(r.backend)}: <span class='{r.verdict}'>{r.verdict}</span></h2>")
        if r.error:
            parts.append(f"<p class='failed'>Failure: {e(r.error)}</p>")
            f = r.failure or {}
            if f.get("stack"):
                parts.append(f"<details open><summary>stuck in {e(str(f.get('component') or 'unknown'))}"
                             "</summary><pre>" + e("\n".join(f["stack"])) + "</pre></details>")
            if f.get("close"):
                parts.append(f"<p>Then close: {e(str(f['close']))}</p>")
        parts.append("<h3>Tasks, threads and resources by phase</h3>")
        parts.append(_table(PHASE_HEADERS, phase_rows(r)))
        parts.append("<h3>Where the tasks come from</h3>")
        parts.append(_table(["component", "baseline", "load", "close", "settle"], component_rows(r)))
        if thread_rows := component_rows(r, threads=True):
            parts.append("<h3>Threads by name (Python threads; the OS count is in the phase table)</h3>")
            parts.append(_table(["thread", "baseline", "load", "close", "settle"], thread_rows))
        parts.append("<h3>Leftovers after close</h3>")
        if r.leftovers:
            rows = "".join(
                f"<tr class='{x.state}'><td>{x.state}</td><td>{x.kind}</td><td>{e(x.name)}</td>"
                f"<td>{e(x.component)}</td><td>{'–' if x.exited_after_ms is None else x.exited_after_ms}</td>"
                f"<td>{e(x.detail)}</td></tr>" for x in r.leftovers)
            parts.append("<table><thead><tr><th>state</th><th>kind</th><th>name</th><th>component</th>"
                         f"<th>exited after ms</th><th>detail</th></tr></thead><tbody>{rows}</tbody></table>")
            for x in r.leftovers:
                if x.state == "leaked" and x.stack:
                    parts.append(f"<details><summary>stack of {e(x.name)}</summary><pre>"
                                 + e("\n".join(x.stack)) + "</pre></details>")
        else:
            parts.append("<p>Nothing new was alive when close returned.</p>")
        parts.append("<h3>Memory</h3>" + _markdownish(memory_lines(r)))
        parts.append("<h3>Event-loop stalls</h3>" + _markdownish(stall_lines(r)))
        d, t = r.delivery, r.throughput
        lat = t.get("latency_ms", {})
        parts.append(f"<p>Delivery: sent {d.get('sent', 0):,} · received {d.get('received', 0):,} · lost "
                     f"{d.get('lost', 0):,} · duplicated {d.get('duplicated', 0):,} · reordered "
                     f"{d.get('reordered', 0):,}"
                     f"<br>publish {t.get('publish_per_s', 0):,.0f}/s · deliver {t.get('deliver_per_s', 0):,.0f}/s"
                     + (f" · latency p50 {lat['p50']} ms · p99 {lat['p99']} ms" if lat else "") + "</p>")
        mine = [(n, svg) for n, svg in shots if f"-{r.name}-" in n]
        if mine:
            parts.append("<h3>The dashboard at each phase boundary</h3>")
            for name, svg in mine:
                parts.append(f"<figure>{offline_svg(svg)}<figcaption>{e(name)}</figcaption></figure>")
    if result.interrupted:
        parts.append("<p><i>Interrupted (Ctrl-C): the runs above are those played until then.</i></p>")
    if result.logs:
        parts.append("<h2>Library log lines (counted, each kind once)</h2>")
        parts.append(_table(["logger", "level", "count", "first message"],
                            [[x.logger, x.level, f"{x.count:,}", x.message[:300]] for x in result.logs]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(result: ScenarioResult, path: Path, scenario_path: str | None,
               shots: list[tuple[str, str]]) -> None:
    path.write_text(scrub(to_html(result, scenario_path, shots)), encoding="utf-8")
