"""Deterministic randomness.

Random amounts are drawn from SHA-256 of (certificate id, command id, purpose), so
replaying a command gives the same amount in any process, any Python version and
any language that has SHA-256. The modulo bias of a 128-bit draw over a range of at
most 10^15 + 1 values is below 2^-78: negligible, and in any case deterministic.
"""

from __future__ import annotations

import hashlib


def draw_between(lo: int, hi: int, *seed: str) -> int:
    """A uniform integer in [lo, hi] determined by ``seed``."""
    assert 0 <= lo <= hi, (lo, hi)
    digest = hashlib.sha256("\x1f".join(seed).encode()).digest()
    return lo + int.from_bytes(digest[:16], "big") % (hi - lo + 1)
