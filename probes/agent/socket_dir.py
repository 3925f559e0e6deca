"""Where an agent listens: a directory only its user can enter, one socket per program.

``$XDG_RUNTIME_DIR/busmon`` when the runtime directory is the user's own (systemd makes it, 0700),
else ``busmon-<uid>`` in the temporary directory. Either is made 0700 and checked before use:
a directory that is a link, another user's, or open to others is refused (someone could have
made it first to catch the sockets), never silently used.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


class UnsafeSocketDir(OSError):
    """The socket directory cannot be trusted: one line saying why."""


def _private(path: Path) -> str:
    """'' if ``path`` is a real directory of this user's that no one else may enter; else why not."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot look at it: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return "not a directory (a link?)"
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not this user ({os.getuid()})"
    if st.st_mode & 0o077:
        return f"others may enter it (mode {stat.S_IMODE(st.st_mode):o}, expected 700)"
    return ""


def socket_dir() -> Path:
    """The private directory for agents' sockets (made if missing)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and not _private(Path(runtime)) else None
    path = base / "busmon" if base is not None else Path(tempfile.gettempdir()) / f"busmon-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UnsafeSocketDir(f"{path}: cannot make it: {exc.strerror or exc}") from None
    why = _private(path)
    if why:
        raise UnsafeSocketDir(f"{path}: refused for busmon's sockets: {why}")
    return path


def socket_path(pid: int) -> Path:
    """The socket of the agent in process ``pid``."""
    return socket_dir() / f"{pid}.sock"


def remove_stale(folder: Path) -> int:
    """Sockets left by agents whose process is gone (killed: no exit to remove them), removed;
    how many."""
    removed = 0
    for path in folder.glob("*.sock"):
        if not path.stem.isdigit():
            continue
        try:
            os.kill(int(path.stem), 0)
        except ProcessLookupError:
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
        except OSError:
            pass  # alive (another user's pid number would be PermissionError: alive too)
    return removed
