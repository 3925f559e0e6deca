"""The dashboard attached to a program, off screen, for bench/run_overhead.py: what ``busmon
attach PID`` runs, with Textual's headless driver. Prints ``attached`` once the first live sample
has reached the screen, and ends when the program does."""

from __future__ import annotations

import sys

from busmon.probes.model import Sample
from busmon.tui.app import BusmonApp
from busmon.tui.attach import AgentConnection, AttachController, find_socket


class Told(AttachController):
    told = False

    def drain(self, limit: int = 10_000) -> list[object]:
        out = super().drain(limit)
        if not self.told and any(isinstance(e, Sample) for e in out):
            self.told = True
            print("attached", flush=True)
        return out


def main() -> None:
    controller = Told(AgentConnection(find_socket(sys.argv[1])))
    app = BusmonApp(controller, exit_when_done=True)
    try:
        app.run(headless=True, size=(120, 40))
    finally:
        controller.shutdown()


if __name__ == "__main__":
    main()
