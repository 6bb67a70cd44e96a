"""Withdrawal thresholds and warnings (SPEC rules 6 and 7).

A threshold is met when its value reaches its limit (value >= limit). The values:

* ``circulations``: distinct accounts other than the seller and the funder that
  circulated, counting the one being applied (a repeat, or a circulation by the
  seller or funder, counts nothing: otherwise they could withdraw everyone's
  commission by circulating back and forth);
* ``cumulative``: everything ever acquired from the pool; the limit is the lower of
  ``max_cumulative_minor`` and ``max_cumulative_bp_of_price`` of the price (rounded
  up, which is exact: for an integer c, c >= ceil(p*bp/10^4) iff c*10^4 >= p*bp);
* ``display_time``: milliseconds since posting; the limit is the lower of the pool's
  ``max_display_s`` and the certificate's own time limit.

The seed's "more than 10 circulations" is ``max_circulations=11``: the 11th
circulation meets the threshold and gains nothing.

A warning fires once per threshold when value * 10^4 >= warn_at_bp * limit
(``warn_at_bp=0`` turns warnings off).
"""

from __future__ import annotations

from domain.state import CertificateState, Pool
from schemas.commands import Thresholds
from schemas.events import ThresholdName

# Evaluation order, which names the threshold reported when several are met at once.
ORDER: tuple[ThresholdName, ...] = ("display_time", "circulations", "cumulative")


def display_limit_ms(state: CertificateState, t: Thresholds) -> int | None:
    limits = [s for s in (t.max_display_s, state.time_limit_s) if s is not None]
    return min(limits) * 1000 if limits else None


def cumulative_limit_minor(state: CertificateState, t: Thresholds) -> int | None:
    limits = []
    if t.max_cumulative_minor is not None:
        limits.append(t.max_cumulative_minor)
    if t.max_cumulative_bp_of_price is not None:
        limits.append(-(-state.price_minor * t.max_cumulative_bp_of_price // 10_000))
    return min(limits) if limits else None


def first_met(
    state: CertificateState, pool: Pool, now_ms: int, only: tuple[ThresholdName, ...] = ORDER
) -> ThresholdName | None:
    """The first threshold of ``only`` that is met (hot path: no allocation)."""
    display = pool.display_limit_ms
    if (display is not None and "display_time" in only and state.posted_at_ms is not None
            and now_ms - state.posted_at_ms >= display):
        return "display_time"
    circulations = pool.thresholds.max_circulations
    if circulations is not None and "circulations" in only and state.distinct_circulations >= circulations:
        return "circulations"
    cumulative = pool.cumulative_limit_minor
    if cumulative is not None and "cumulative" in only and pool.cumulative_minor >= cumulative:
        return "cumulative"
    return None


def due_warnings(
    state: CertificateState, pool: Pool, now_ms: int
) -> list[tuple[ThresholdName, int, int]]:
    """Thresholds close enough to warn about and not warned yet (hot path: returns
    early unless a warning is due)."""
    bp = pool.thresholds.warn_at_bp
    if bp == 0 or pool.status != "open":
        return []
    due: list[tuple[ThresholdName, int, int]] = []
    warned = pool.warned
    display = pool.display_limit_ms
    if display is not None and state.posted_at_ms is not None and "display_time" not in warned:
        value = now_ms - state.posted_at_ms
        if value * 10_000 >= bp * display and value < display:
            due.append(("display_time", value, display))
    limit = pool.thresholds.max_circulations
    if limit is not None and "circulations" not in warned:
        value = state.distinct_circulations
        if value * 10_000 >= bp * limit and value < limit:
            due.append(("circulations", value, limit))
    limit = pool.cumulative_limit_minor
    if limit is not None and "cumulative" not in warned:
        value = pool.cumulative_minor
        if value * 10_000 >= bp * limit and value < limit:
            due.append(("cumulative", value, limit))
    return due


def next_deadline_ms(state: CertificateState) -> int | None:
    """When the withdrawal timer must look at this certificate next, if ever.

    The earliest of: the display-time warning (if not yet raised) and withdrawal
    while the pool is open; the pool's end while the certificate is on display; the
    end of a purchase's hold. ``domain.timer_command`` says which command is due.
    """
    if state.held_until_ms is not None:
        return state.held_until_ms
    pool = state.pool
    if pool is None or state.status != "posted" or state.posted_at_ms is None:
        return None
    deadlines = []
    if pool.close_after_s is not None:
        deadlines.append(state.posted_at_ms + pool.close_after_s * 1000)
    limit = pool.display_limit_ms
    if pool.status == "open" and limit is not None:
        deadlines.append(state.posted_at_ms + limit)
        bp = pool.thresholds.warn_at_bp
        if bp and "display_time" not in pool.warned:
            deadlines.append(state.posted_at_ms + -(-limit * bp // 10_000))
    return min(deadlines, default=None)
