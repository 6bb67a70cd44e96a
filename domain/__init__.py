"""The commission engine's pure domain core.

Every rule of SPEC.md lives here and nowhere else. No I/O, no clocks, no global
randomness: time is the command's ``at_ms`` and randomness is drawn from a hash of
the command id, so the same command sequence yields the same events and
settlements, byte for byte. Services are thin adapters around :func:`handle`.

Nothing here imports faust, aiokafka, kafka, redis or prometheus_client (a unit
test enforces it).
"""

from domain.handlers import Accepted, Duplicate, Outcome, Rejected, handle
from domain.invariants import InvariantViolation, check_invariants
from domain.offer import issue_offer
from domain.state import CertificateState, Pool
from domain.thresholds import next_deadline_ms

__all__ = [
    "Accepted",
    "CertificateState",
    "Duplicate",
    "InvariantViolation",
    "Outcome",
    "Pool",
    "Rejected",
    "check_invariants",
    "handle",
    "issue_offer",
    "next_deadline_ms",
]
