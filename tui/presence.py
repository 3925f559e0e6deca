"""Whether a person is looking at the dashboard: a terminal, or a page of ``busmon serve``.

Without one (CI, a pipe) a played dashboard ends with the playback; with one it stays on its
final screen until q. A page's busmon has pipes for stdin and stdout, as CI does, but
textual-serve starts it with Textual's web driver: that is how it is told apart.
"""

from __future__ import annotations

import os
import sys

#: the variable textual-serve sets to start each page's busmon with Textual's web driver
WEB_DRIVER_ENV = "TEXTUAL_DRIVER"


def in_a_web_page() -> bool:
    """True inside a page served by textual-serve: a person is watching, though stdin and
    stdout are pipes (the dashboard must stay up for them, as in a terminal)."""
    return "web_driver" in os.environ.get(WEB_DRIVER_ENV, "")


def someone_watching() -> bool:
    """A person can see the dashboard and press q: a terminal, or a web page."""
    return (sys.stdin.isatty() and sys.stdout.isatty()) or in_a_web_page()
