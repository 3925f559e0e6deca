"""Counted words for the dashboard: ``1 leftover``, ``3 leftovers``, never ``1 leftovers``."""

from __future__ import annotations

_IRREGULAR = {"process": "processes", "kind": "kinds"}


def plural(word: str, n: int) -> str:
    return word if n == 1 else _IRREGULAR.get(word, word + "s")


def count(n: int, word: str) -> str:
    """``1 sample``, ``2 samples``, ``1,200 samples``."""
    return f"{n:,} {plural(word, n)}"
