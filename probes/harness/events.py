"""Everything the arena tells a front end, as one union: the dashboard, headless playback and
compare consume the same events, in the order the arena emits them."""

from __future__ import annotations

from typing import Union

from busmon.probes.harness.gate import AwaitingStep
from busmon.probes.model import FailureNoted, PhaseSnapshot, PhaseStarted, RunFinished, Sample

#: a phase began · a probe reading · a phase's counts · a key press is awaited · a run failed
#: (said at once) · a run's result
ArenaEvent = Union[PhaseStarted, Sample, PhaseSnapshot, AwaitingStep, FailureNoted, RunFinished]

__all__ = ["ArenaEvent", "AwaitingStep", "FailureNoted", "PhaseSnapshot", "PhaseStarted", "RunFinished", "Sample"]
