"""Process probe: RSS, CPU %, open file descriptors, OS threads (psutil)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil


@dataclass(frozen=True, slots=True)
class ProcessReading:
    rss_mb: float
    cpu_percent: float
    open_fds: int
    os_threads: int


class ProcessProbe:
    def __init__(self) -> None:
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)  # primes the CPU counter

    def read(self) -> ProcessReading:
        p = self._proc
        try:
            with p.oneshot():
                rss = p.memory_info().rss / (1024 * 1024)
                cpu = p.cpu_percent(None)
                fds = p.num_fds() if hasattr(p, "num_fds") else 0
                threads = p.num_threads()
        except psutil.Error:
            return ProcessReading(0.0, 0.0, 0, 0)
        return ProcessReading(round(rss, 1), cpu, fds, threads)


_SELF = psutil.Process(os.getpid())


def rss_mb() -> float:
    """This process's resident memory now, in MiB (0.0 when the OS will not say)."""
    try:
        return round(_SELF.memory_info().rss / (1024 * 1024), 1)
    except psutil.Error:
        return 0.0
