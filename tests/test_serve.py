"""``busmon serve``: the dashboard in a real browser (Debian's chromium, driven by Playwright),
served by textual-serve on loopback; and what it refuses, in one line.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from busmon.bus.brokers_local import free_port
from tests.browser import ARTIFACTS, FLAGS, TerminalPage, chromium
from tests.run_programs import TIMEOUT_S, assert_one_line, busmon_cli

SCENARIO = """
    name = "in a page"
    backend = "memory"
    [[runs]]
    name = "short"
    messages = 200
"""


class Served:
    """``busmon serve ARGS`` on a free loopback port, until the test ends."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc = subprocess.Popen([sys.executable, "-m", "busmon", "serve", "--port", str(self.port), *args],
                                     cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.first_line = self.proc.stderr.readline()
        if "busmon: serving" not in self.first_line:
            self.proc.kill()
            raise AssertionError(self.first_line + self.proc.communicate(timeout=TIMEOUT_S)[1])

    def stop(self) -> str:
        """SIGTERM (as a person's Ctrl-C), then what it said; SIGKILL if it will not stop."""
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            err += "\n(busmon serve did not stop on SIGTERM: killed)"
        return self.first_line + err


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=FLAGS)
        try:
            yield b
        finally:
            b.close()


def test_the_dashboard_in_chromium_and_a_key_pressed_in_the_page(tmp_path, browser):
    served = Served(tmp_path)
    try:
        term = TerminalPage.open(browser, served.url)
        term.wait_for("baseline › create › subscribe › load › hold › close › settle")  # the phase bar
        term.wait_for("press n to take the baseline")
        term.press("n")
        term.wait_for("baseline done · n starts create")  # the key reached busmon: the baseline is taken
        term.wait_for(lambda: "busmon.session" in term.text())  # and the panels show the run's own task
        ARTIFACTS.mkdir(exist_ok=True)
        term.page.screenshot(path=str(ARTIFACTS / "busmon-serve-dashboard.png"))
        assert (ARTIFACTS / "busmon-serve-dashboard.png").stat().st_size > 10_000
        pages = psutil.Process(served.proc.pid).children(recursive=True)
        assert pages, "the page runs a busmon of its own"
    finally:
        said = served.stop()  # SIGTERM with the page still open: its busmon is told to quit, and ends
    assert served.proc.returncode == 0, said
    gone, alive = psutil.wait_procs(pages, timeout=10)
    assert not alive, alive


def test_play_in_a_page_stays_on_its_final_screen_until_q(tmp_path, browser):
    (tmp_path / "short.toml").write_text(SCENARIO)
    served = Served(tmp_path, "--", "play", "short.toml")
    try:
        term = TerminalPage.open(browser, served.url)
        term.wait_for("playback finished: r compares the runs, q quits")
        assert term.socket is not None and not term.socket.is_closed()  # no terminal, yet a person watching
        term.quit()
    finally:
        said = served.stop()
    assert served.proc.returncode == 0, said
    assert "Traceback" not in said, said


def test_bad_input_in_a_page_is_shown_in_the_page(tmp_path, browser):
    """busmon's one line, drawn in the page (its stderr is the server's), until q."""
    served = Served(tmp_path, "--", "play", "no-such-file.toml")
    try:
        term = TerminalPage.open(browser, served.url, 1200, 600)
        term.wait_for("busmon: no-such-file.toml:")
        term.quit()
    finally:
        said = served.stop()
    assert "Traceback" not in said, said


def test_the_page_and_its_start_line_never_show_a_password(tmp_path):
    (tmp_path / "short.toml").write_text(SCENARIO)
    served = Served(tmp_path, "--", "play", "short.toml", "--url", "nats://bob:s3cr3t-pw@127.0.0.1:1")
    try:
        with urllib.request.urlopen(served.url, timeout=30) as r:
            html = r.read().decode()
    finally:
        said = served.stop()
    assert "nats://bob:***@127.0.0.1:1" in html and "s3cr3t-pw" not in html
    assert "s3cr3t-pw" not in said and "***" in said
    from busmon.tui.serve import shown

    assert shown(["play", "x.toml", "--url=kafka://bob:pw-1@h:9092"]) == "busmon play x.toml --url=kafka://bob:***@h:9092"


def test_what_serve_refuses_is_one_line(taken_port):
    refused = [
        (["--", "run", "--", "python", "app.py"], "only a dashboard can be served", "not run"),
        (["--", "--messages", "10", "compare", "x.toml"], "not compare"),
        (["--", "play", "x.toml", "--headless"], "leave out --headless"),
        (["--", "--version"], "prints and exits"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0", "--public"),
        (["--port", str(taken_port)], f"--port {taken_port}", "the port is in use"),
    ]
    for args, *said in refused:
        assert_one_line(busmon_cli("serve", *args), *said)
    missing = "import sys; sys.modules['textual_serve'] = None; "  # as if the serve extra were not installed
    assert_one_line(busmon_cli("serve", prelude=missing), "pip install -e '.[serve]'")


def test_a_public_address_is_warned_about():
    from busmon.tui.serve import public_warning

    assert public_warning("127.0.0.1", 8000) is None
    warning = public_warning("0.0.0.0", 8000)
    assert warning is not None and "no login" in warning and "0.0.0.0:8000" in warning
