"""Playback end to end: the ladder on real brokers, the CLI, reports, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from busmon.probes.harness.scenario import load_scenario
from busmon.probes.harness.session import Session
from busmon.tui import cli

SAMPLES = Path(__file__).resolve().parents[1] / "sample_configs"


def test_the_ladder_on_memory_kafka_and_nats_back_to_back_in_one_process(kafka_broker, nats_broker):
    base = load_scenario(SAMPLES / "ladder-kafka.toml")
    for backend, url in (("memory", "memory://"), ("kafka", kafka_broker.url), ("nats", nats_broker.url)):
        sc = base.with_target(backend, url)
        with Session(sc, lambda e: None) as session:
            result = session.play()
        assert [r.name for r in result.runs] == ["low", "medium", "high", "extreme"]
        for r in result.runs:
            assert r.verdict == "clean", (backend, r.name, r.error, [x for x in r.leftovers if x.state == "leaked"])
            assert r.delivery["lost"] == 0 and r.delivery["duplicated"] == 0 and r.delivery["reordered"] == 0
            assert r.delivery["received"] == r.delivery["sent"] == {"low": 500, "medium": 2000,
                                                                    "high": 5000, "extreme": 10000}[r.name]
            assert r.drift == {"tasks": 0, "threads": 0}, (backend, r.name, r.drift)
            # the resources too, at every step: no socket, fd or child left, nothing retained, no stall
            assert not [x for x in r.leftovers if x.state != "exited"], (backend, r.name, r.leftovers)
            assert r.retained() == [] and r.stalls == (), (backend, r.name, r.retained(), r.stalls)


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["busmon", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_play_headless_quickstart_writes_json_and_markdown(tmp_path, monkeypatch, capsys):
    j, m = tmp_path / "r.json", tmp_path / "r.md"
    code, out, _ = run_cli(["play", str(SAMPLES / "quickstart.toml"), "--headless", "--report", str(j)],
                           monkeypatch, capsys)
    assert code == 0
    assert "clean" in out
    doc = json.loads(j.read_text())
    assert doc["schema"] == 2 and doc["verdict"] == "clean"
    run = doc["runs"][0]
    for key in ("name", "backend", "verdict", "phases", "settle_ms", "leftovers", "delivery", "throughput"):
        assert key in run
    assert [p["phase"] for p in run["phases"]] == ["baseline", "create", "subscribe", "load", "close", "settle"]
    for key in ("phase", "tasks", "threads", "os_threads", "by_component"):
        assert key in run["phases"][0]
    assert set(run["delivery"]) >= {"sent", "received", "lost", "duplicated", "reordered"}
    assert set(run["throughput"]["latency_ms"]) == {"p50", "p90", "p99", "max"}
    code, _, _ = run_cli(["play", str(SAMPLES / "quickstart.toml"), "--headless", "--report", str(m)],
                         monkeypatch, capsys)
    text = m.read_text()
    assert code == 0 and "| phase | tasks | Δ baseline" in text and "`bus.pool` | 0 | 256 | 0 | 0 |" in text


def test_leaky_bus_from_the_command_line_exits_1_and_names_the_leak(tmp_path, monkeypatch, capsys):
    scenario = tmp_path / "s.toml"
    scenario.write_text('[probes]\nsettle_timeout_s = 0.2\n[[runs]]\nname = "r"\nmessages = 100\n')
    code, out, _ = run_cli(["play", str(scenario), "--headless", "--bus", "tests.leaky_buses:TaskLeaker"],
                           monkeypatch, capsys)
    assert code == 1
    assert "bus.leaky.heartbeat" in out and "leaked" in out


def test_unreachable_broker_exits_3_after_close_and_settle(tmp_path, monkeypatch, capsys):
    from tests.brokers import free_port

    report = tmp_path / "r.json"
    code, _, err = run_cli(["play", str(SAMPLES / "quickstart.toml"), "--headless", "--backend", "nats",
                            "--url", f"nats://127.0.0.1:{free_port()}", "--report", str(report)],
                           monkeypatch, capsys)
    assert code == 3
    run = json.loads(report.read_text())["runs"][0]
    assert run["verdict"] == "failed" and "create:" in run["error"]
    assert [p["phase"] for p in run["phases"]][-2:] == ["close", "settle"]


@pytest.mark.parametrize("content, expected", [
    ('name = "x"\nbogus = 1\n', "test.toml:2: bogus: unknown key"),
    ('[defaults]\nmessages = "many"\n', "test.toml:2: defaults.messages: expected an integer >= 1, got \"many\""),
    ('[[runs]]\nname = "a"\n[[runs]]\nname = "b"\nmessages = -5\n', "test.toml:5: runs[1].messages: expected an integer >= 1, got -5"),
    ("name = [\n", "test.toml"),
    ('backend = "carrier-pigeon"\n', "test.toml:1: backend: expected one of memory, kafka, nats, nats-js"),
    ('backend = "kafka"\nurl = "nats://x:1"\n', "test.toml:2: url: expected a kafka:// URL"),
    ('[probes]\nsettle_timeout_s = -1\n', "test.toml:2: probes.settle_timeout_s: expected a number >= 0, got -1"),
])
def test_bad_scenario_files_exit_2_with_one_line(tmp_path, monkeypatch, capsys, content, expected):
    path = tmp_path / "test.toml"
    path.write_text(content)
    code, _, err = run_cli(["play", str(path), "--headless"], monkeypatch, capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert expected in lines[0].replace(str(tmp_path) + "/", "")
    assert "Traceback" not in err


def test_missing_file_and_directory_exit_2(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["play", str(tmp_path / "nope.toml"), "--headless"], monkeypatch, capsys)
    assert code == 2 and "nope.toml: no such file" in err
    code, _, err = run_cli(["play", str(tmp_path), "--headless"], monkeypatch, capsys)
    assert code == 2 and "expected a TOML file" in err


def test_bad_bus_import_path_and_report_suffix_exit_2(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["play", str(SAMPLES / "quickstart.toml"), "--headless", "--bus", "no_such_mod:make"],
                           monkeypatch, capsys)
    assert code == 2 and "cannot import module 'no_such_mod'" in err
    code, _, err = run_cli(["play", str(SAMPLES / "quickstart.toml"), "--headless", "--report",
                            str(tmp_path / "r.txt")], monkeypatch, capsys)
    assert code == 2 and "expected a path ending in .json" in err


def test_every_sample_config_loads():
    for path in SAMPLES.glob("*.toml"):
        load_scenario(path)


def test_compare_prints_one_table_across_backends(nats_broker, monkeypatch, capsys, tmp_path):
    scenario = tmp_path / "c.toml"
    scenario.write_text('name = "c"\n[[runs]]\nname = "1k"\nmessages = 1000\n')
    code, out, _ = run_cli(["compare", str(scenario), "--backends", "memory,nats",
                            "--url", f"nats={nats_broker.url}"], monkeypatch, capsys)
    assert code == 0
    assert "memory" in out and "nats" in out and "1k" in out


def test_ignore_rules_from_the_command_line(tmp_path, monkeypatch, capsys):
    scenario = tmp_path / "s.toml"
    scenario.write_text('[probes]\nsettle_timeout_s = 0.1\n[[runs]]\nname = "r"\nmessages = 100\n')
    report = tmp_path / "r.json"
    code, _, _ = run_cli(["play", str(scenario), "--headless", "--bus", "tests.leaky_buses:TaskLeaker",
                          "--ignore-task", "bus.leaky.*", "--report", str(report)], monkeypatch, capsys)
    assert code == 0
    (left,) = json.loads(report.read_text())["runs"][0]["leftovers"]
    assert left["state"] == "ignored" and "bus.leaky.*" in left["detail"]


def test_the_backend_reported_is_the_one_that_ran(tmp_path, monkeypatch, capsys, nats_broker):
    report = tmp_path / "r.json"
    code, _, _ = run_cli(["play", str(SAMPLES / "quickstart.toml"), "--headless", "--url", nats_broker.url,
                          "--report", str(report)], monkeypatch, capsys)
    assert code == 0
    assert {r["backend"] for r in json.loads(report.read_text())["runs"]} == {"nats"}
    code, _, err = run_cli(["play", str(SAMPLES / "quickstart.toml"), "--headless", "--backend", "nats-js",
                            "--url", nats_broker.url], monkeypatch, capsys)
    assert code == 2 and "they disagree" in err and len(err.strip().splitlines()) == 1


def test_an_empty_ignore_pattern_is_a_usage_error(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["play", str(SAMPLES / "quickstart.toml"), "--headless", "--ignore-type", ""],
                           monkeypatch, capsys)
    assert code == 2 and "--ignore-type: expected a pattern, got an empty one" in err
    bad = tmp_path / "s.toml"
    bad.write_text('name = "s"\n[probes]\nignore_sockets = ["127.0.0.1:9092", " "]\n[[runs]]\nname = "r"\n')
    code, _, err = run_cli(["play", str(bad), "--headless"], monkeypatch, capsys)
    assert code == 2 and "probes.ignore_sockets: expected a list of non-empty patterns" in err


@pytest.mark.parametrize(("per_run", "expected"), [(True, "fresh"), (False, "as written")])
def test_consumer_group_gets_each_runs_own_suffix_unless_asked_not_to(per_run: bool, expected: str) -> None:
    from busmon.probes.harness.scenario import parse_scenario
    from tests import leaky_buses

    leaky_buses.GROUPS_SEEN.clear()
    sc = parse_scenario(f"""
        name = "groups"
        backend = "tests.leaky_buses:GroupRecorder"
        [defaults]
        topics = 1
        [defaults.subscribe]
        count = 2
        group = "billing"
        group_per_run = {str(per_run).lower()}
        [[runs]]
        name = "one"
        messages = 10
        [[runs]]
        name = "two"
        messages = 10
    """.replace("\n        ", "\n"))
    with Session(sc, lambda e: None) as session:
        result = session.play()
    assert [r.verdict for r in result.runs] == ["clean", "clean"]
    first, second = leaky_buses.GROUPS_SEEN[:2], leaky_buses.GROUPS_SEEN[2:]
    assert len(set(first)) == 1 and len(set(second)) == 1   # a run's subscriptions share the group
    if expected == "fresh":
        assert first[0].startswith("billing-") and second[0].startswith("billing-") and first[0] != second[0]
    else:
        assert first[0] == second[0] == "billing"
