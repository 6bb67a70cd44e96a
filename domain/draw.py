"""Randomness that no client can predict or choose.

A random amount is drawn from ``entropy``: 32 bytes the sequencer computes as
HMAC-SHA256 under a secret draw key over (certificate id, sequence number) and
carries on the ``accepted`` record (services.circulation.intake). The sequence number is
the certificate's count of accepted commands, so nothing a client sends (its
command id, idempotency key, timestamp or body) enters the draw, and without the
secret the draw of a coming seq is unpredictable. Replaying a command gives the same
entropy, hence the same amount, in every stage.

The amount is SHA-256(entropy, purpose) as a 128-bit integer reduced to the range;
the modulo bias over a range of at most 10^15 + 1 values is below 2^-78. The odds
are published: a random policy is uniform over its closed range.
"""

from __future__ import annotations

import hashlib
import hmac

from domain.state import CertificateState
from schemas.commands import RandomAmount, ReplenishRandom


class MissingEntropy(AssertionError):
    """A random policy was applied without the sequencer's entropy: a wiring bug."""


def draw_between(lo: int, hi: int, entropy: bytes, purpose: str) -> int:
    """A uniform integer in [lo, hi] determined by ``entropy`` and ``purpose``."""
    assert 0 <= lo <= hi, (lo, hi)
    if not entropy:
        raise MissingEntropy("a random amount needs the sequencer's draw entropy")
    digest = hashlib.sha256(entropy + purpose.encode()).digest()
    return lo + int.from_bytes(digest[:16], "big") % (hi - lo + 1)


def entropy_for(secret: bytes, certificate_id: str, seq: int) -> bytes:
    """The sequencer's entropy for the command that becomes ``seq`` of a certificate."""
    return hmac.new(secret, f"{certificate_id}\x1f{seq}".encode(), hashlib.sha256).digest()


def needs_entropy(state: CertificateState | None) -> bool:
    """Whether a command on this certificate may draw (its pool has a random policy)."""
    pool = state.pool if state is not None else None
    return pool is not None and (isinstance(pool.acquisition.amount, RandomAmount)
                                 or isinstance(pool.replenish, ReplenishRandom))


def entropy_at(secret: bytes, state: CertificateState | None, certificate_id: str) -> bytes:
    """What the sequencer hands to ``handle`` for the next command of a certificate:
    entropy for seq ``state.seq + 1`` when its pool may draw, else nothing."""
    if not needs_entropy(state):
        return b""
    assert state is not None
    return entropy_for(secret, certificate_id, state.seq + 1)
