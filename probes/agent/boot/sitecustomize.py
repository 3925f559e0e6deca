"""busmon's agent, started before the program's first line (``busmon run`` puts this folder
first on PYTHONPATH; Python imports ``sitecustomize`` at start-up).

It starts the agent, takes itself off the path, puts PYTHONPATH back as it was, and runs the
``sitecustomize`` the program would have had without busmon. If the agent cannot start here
(busmon is not importable by this Python), the program does not run: it exits with code 2 and
``busmon run`` says why in one line.
"""

import os
import sys


def _chain_to_original(here):
    """The program's own sitecustomize, if there is one further on the path."""
    import importlib.machinery
    import importlib.util

    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", sys.path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def _start():
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        from busmon.probes.agent.start import start_from_environment
    except ImportError:
        start_from_environment = None
    if start_from_environment is None:
        _fallback(here)
    else:
        start_from_environment()
    _chain_to_original(here)


def _fallback(here):
    """busmon is not importable by this Python: try where busmon run found it, else give up."""
    import json

    text = os.environ.get("BUSMON_AGENT", "{}")
    try:
        config = json.loads(text)
    except ValueError:
        config = {}
    extra = [p for p in config.get("sys_path", ()) if p not in sys.path]
    sys.path.extend(extra)
    try:
        from busmon.probes.agent.start import start_from_environment
    except ImportError as exc:
        fd = config.get("channel_fd")
        message = (f"this Python ({sys.executable}) cannot import busmon's agent ({exc}); "
                   "install busmon into the program's environment")
        line = json.dumps({"format": "busmon-agent", "version": 1, "error": message}) + "\n"
        if isinstance(fd, int):
            try:
                os.write(fd, line.encode())
            except OSError:
                pass
        os._exit(2)
    start_from_environment()


_start()
