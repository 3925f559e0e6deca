"""Measurement and the measuring harness: probes, sampler, phase runner, verdicts, reports.

Nothing here imports Textual: headless playback runs without it.
"""
