"""busmon's one-line error, shown in a page of ``busmon serve``.

In a terminal, bad input is one line on stderr and exit code 2. A page has no stderr to show:
its busmon's stderr goes to the terminal ``busmon serve`` runs in, and the page would stay on
its loading splash. So in a page the same line is drawn, until the person presses q.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import Footer, Static


class ErrorPage(App[None]):
    """The error, and q to end the page's session."""

    CSS = "Static { padding: 1 2; }"
    BINDINGS = [("q", "quit", "Close")]

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        # a Text, not markup: brackets in the user's values show as typed
        yield Static(Text.assemble(("busmon: ", "bold red"), self.message, "\n\n",
                                   ("q closes this page's session (the command line is busmon serve's: "
                                    "fix it there, then reload)", "dim")))
        yield Footer()


def show_in_page(message: str) -> None:
    ErrorPage(message).run()
