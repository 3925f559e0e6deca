"""The OS thread ids of the Python threads started while a watch runs.

A thread that ``join()`` has returned for still has its OS thread for a moment (the lock
``join`` waits on is released just before the OS thread ends). Seen through psutil right then,
it is an OS thread with no Python thread object: a "native" thread that appeared and exited.
Knowing which OS threads Python itself started tells it apart from a native library's.

``threading.setprofile`` installs a hook that each thread started afterwards runs once, at its
start, in that thread: it notes the thread's native id and removes itself, so the thread runs
unprofiled from then on. When someone else's profile hook is set, nothing is installed.
"""

from __future__ import annotations

import sys
import threading
from typing import Any


class ThreadBirths:
    def __init__(self) -> None:
        self.native_ids: set[int] = set()
        self._installed = False

    def install(self) -> bool:
        """Start noting (False when another profile hook is in place: it is left alone)."""
        if threading.getprofile() is not None:
            return False
        threading.setprofile(self._born)
        self._installed = True
        return True

    def uninstall(self) -> None:
        if self._installed and threading.getprofile() == self._born:
            threading.setprofile(None)
        self._installed = False

    def _born(self, frame: Any, event: str, arg: Any) -> None:
        self.native_ids.add(threading.get_native_id())   # a set's add is atomic under the GIL
        sys.setprofile(None)
