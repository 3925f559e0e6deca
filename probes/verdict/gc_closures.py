"""Which descriptors the garbage collector closed: the only honest basis for saying "closed only
by the garbage collector".

A socket, file or transport that is collected while still open closes its descriptor in its
finalizer, and Python says so with a ``ResourceWarning`` naming it (``unclosed <socket.socket
fd=14 …>``, ``unclosed transport <_SelectorSocketTransport fd=14 …>``). Collecting with those
warnings recorded tells which descriptors went that way. A descriptor that is gone after the
collection without such a warning was closed by code: typically the other end of a loopback
pair, closed by its owner when its peer went.
"""

from __future__ import annotations

import gc
import re
import warnings

_FD = re.compile(r"\bfd=(\d+)")


def collect_noting_closed_fds() -> frozenset[int]:
    """``gc.collect()``, returning the descriptors that collected objects closed unclosed.

    The warnings are recorded, never shown: busmon's verdict says what they would have said.
    (``catch_warnings`` swaps the process's filters for the collection's few milliseconds.)
    """
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    closed: set[int] = set()
    for w in seen:
        if issubclass(w.category, ResourceWarning):
            closed.update(int(n) for n in _FD.findall(str(w.message)))
    return frozenset(closed)
