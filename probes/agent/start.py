"""The agent's entry point, called from ``busmon run``'s ``sitecustomize``."""

from __future__ import annotations

import json
import os
import sys

from busmon.probes.agent.config import ENV, AgentConfigError, take_from_environment

#: the process's agent (None: the program runs without busmon)
AGENT = None


def start_from_environment() -> None:
    """Start the agent when ``BUSMON_AGENT`` asks for one. A configuration the agent cannot
    read stops the program before its first line: exit code 2, the reason on the channel."""
    global AGENT
    raw = os.environ.get(ENV)
    try:
        config = take_from_environment()
    except AgentConfigError as exc:
        _refuse(raw, str(exc))
        return
    if config is None:
        return
    from busmon.probes.agent.agent import Agent
    from busmon.probes.metrics.server import MetricsUnavailable

    AGENT = Agent(config)
    try:
        AGENT.start()
    except MetricsUnavailable as exc:  # asked for and not servable: the program does not run unwatched
        AGENT = None
        _refuse(raw, str(exc))


def _refuse(raw: str | None, message: str) -> None:
    try:
        fd = json.loads(raw or "{}").get("channel_fd")
    except (ValueError, AttributeError):
        fd = None
    if isinstance(fd, int):
        try:
            from busmon.probes.agent.channel import agent_bytes

            os.write(fd, agent_bytes(error=message))
        except OSError:
            pass
    else:
        print(f"busmon: {message}", file=sys.stderr)
    os._exit(2)
