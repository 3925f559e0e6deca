"""The harness that drives a bus: the arena loop, sessions, the phase runner, the sampler, scenarios, delivery audit."""
