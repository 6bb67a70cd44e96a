"""Invariants asserted after every accepted command (and by tests from outside).

These are not validation: a violation means the engine itself is wrong, so it raises
instead of producing a rejection, and the service stops rather than publish money
movements it cannot account for.
"""

from __future__ import annotations

from domain.state import MAX_CHAIN_HOPS, CertificateState


class InvariantViolation(AssertionError):
    pass


def _require(ok: bool, what: str, state: CertificateState) -> None:
    if not ok:
        raise InvariantViolation(f"{state.certificate_id} seq={state.seq}: {what}")


def check_invariants(state: CertificateState) -> None:
    _require(len(state.chain) <= MAX_CHAIN_HOPS, "chain beyond its limit", state)
    _require(state.circulations == len(state.chain), "circulations != hops", state)
    _require(state.holder == (state.chain[-1].account_id if state.chain else None),
             "holder is not the last hop", state)
    pool = state.pool
    if pool is None:
        _require(state.status == "issued", "posted without a pool", state)
        return
    buckets = (pool.attached_minor, pool.reserve_minor, pool.pending_minor,
               pool.paid_minor, pool.released_minor, pool.voided_minor, pool.cumulative_minor)
    _require(min(buckets) >= 0, f"negative amount in {buckets}", state)
    total = (pool.attached_minor + pool.reserve_minor + pool.pending_minor
             + pool.paid_minor + pool.released_minor)
    _require(total == pool.budget_minor, f"conservation: {total} != {pool.budget_minor}", state)
    # The same facts seen from the other side: what was acquired is exactly what is
    # now pending, paid out or voided.
    acquired = sum(pool.acquired.values())
    _require(acquired == pool.cumulative_minor, "cumulative != sum of acquisitions", state)
    _require(acquired == pool.pending_minor + pool.paid_minor + pool.voided_minor,
             "acquisitions != pending + paid + voided", state)
    _require(pool.voided_minor <= pool.released_minor, "voided beyond released", state)
    _require(min(pool.acquired.values(), default=1) > 0, "zero acquisition recorded", state)
    _require(state.seller_id not in pool.acquired and pool.funder_id not in pool.acquired,
             "seller or funder gained on their own certificate", state)
    if pool.status == "withdrawn":
        _require(pool.attached_minor == pool.reserve_minor == pool.pending_minor == 0,
                 "withdrawn pool still holds money", state)
    if state.status == "purchased":
        _require(pool.attached_minor == pool.reserve_minor == pool.pending_minor == 0,
                 "purchased certificate still holds money", state)
