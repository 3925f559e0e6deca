"""busmon's agent: the probes inside a program busmon did not start itself (``busmon run``)."""
