"""A bus for the Ctrl-C tests: it says on stdout when its load is under way (so a test signals
on an event, not after a guessed delay) and leaves a task behind, so settling after the first
Ctrl-C waits the whole settle deadline: long enough for a second press to matter."""

from __future__ import annotations

from tests.leaky_buses import Announcer, TaskLeaker


class LeakingAnnouncer(Announcer, TaskLeaker):
    """Announcer's publish, TaskLeaker's start."""
