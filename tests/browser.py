"""A real browser for the tests: Debian's ``chromium``, driven by Playwright through
``executable_path`` (Playwright's own browser downloads are never used). A machine without it
fails the test with how to install it, never a silent pass."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pytest

INSTALL = ("install Debian's chromium package (apt-get update && apt-get install -y chromium), "
           "or put chromium on PATH; .ci/run installs it")
#: as this machine's probe starts it: no sandbox (root), no GPU, and nothing that reaches the network
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
#: where the tests keep what a person would look at (the page's screenshot)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
_ANSI = re.compile(r"\x1b\[[0-9;?$]*[a-zA-Z]|\x1b\][^\x07]*\x07")


def chromium() -> str:
    found = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                  if p and Path(p).exists()), None)
    if found is None:
        pytest.fail(f"chromium not found: {INSTALL}", pytrace=False)
    return found


class TerminalPage:
    """A textual-serve page: what its terminal was sent, as text without escape codes."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.frames: list[str] = []
        self.socket: Any = None
        page.on("websocket", self._opened)

    def _opened(self, ws: Any) -> None:
        self.socket = ws
        ws.on("framereceived", lambda payload: self.frames.append(
            payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload))

    @classmethod
    def open(cls, browser: Any, url: str, width: int = 1400, height: int = 900) -> TerminalPage:
        """A new page of ``browser`` on ``url``, its terminal's traffic followed from the start."""
        term = cls(browser.new_page(viewport={"width": width, "height": height}))
        term.page.goto(url)
        return term

    def press(self, key: str) -> None:
        """A key pressed in the page, as a person would: a click on it first (the terminal's focus)."""
        self.page.click("body")
        self.page.keyboard.press(key)

    def quit(self) -> None:
        """q, and the page's session ends (its websocket closes)."""
        self.press("q")
        self.wait_for(lambda: self.socket.is_closed())

    def text(self) -> str:
        return _ANSI.sub("", "".join(self.frames))

    def wait_for(self, what: str | Callable[[], bool], timeout: float = 60.0) -> None:
        """Until the terminal has been sent ``what`` (or the check holds), at most ``timeout``;
        between looks, Playwright's own wait, so its events keep arriving."""
        check = (lambda: what in self.text()) if isinstance(what, str) else what
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"not in the page within {timeout:g} s: {what!r}"
            self.page.wait_for_timeout(100)
