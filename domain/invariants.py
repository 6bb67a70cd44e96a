"""Invariants asserted after every accepted command (and by tests from outside).

These are not validation: a violation means the engine itself is wrong, so it raises
instead of producing a rejection, and the service stops rather than publish money
movements it cannot account for.
"""

from __future__ import annotations

from domain.state import MAX_CHAIN_HOPS, CertificateState


class InvariantViolation(AssertionError):
    pass


def _fail(what: str, state: CertificateState) -> None:
    raise InvariantViolation(f"{state.certificate_id} seq={state.seq}: {what}")


def check_invariants(state: CertificateState, *, full: bool = False) -> None:
    """O(1) checks after every command; ``full`` adds the O(accounts) cross-checks
    (tests run them after every step; the hot path cannot afford them per message).

    Written as plain ``if`` statements: this runs once per message."""
    chain = state.chain
    if len(chain) > MAX_CHAIN_HOPS:
        _fail("chain beyond its limit", state)
    if state.circulations != len(chain):
        _fail("circulations != hops", state)
    if state.holder != (chain[-1].account_id if chain else None):
        _fail("holder is not the last hop", state)
    if not 0 <= state.distinct_circulations <= state.circulations:
        _fail("distinct circulations outside 0..hops", state)
    status = state.status
    bought = status == "purchased" or status == "refunded"
    if bought:
        # the price: held until the hold ends, then paid; refunds come out of it
        held_price, paid_price = state.price_held_minor, state.price_paid_minor
        if (held_price < 0 or paid_price < 0 or state.refunded_minor < 0
                or state.price_clawed_minor < 0):
            _fail("negative amount of the price", state)
        if (held_price + paid_price + state.refunded_minor - state.price_clawed_minor
                != state.price_minor):
            _fail("price != held + paid + refunded - clawed back", state)
        if held_price and state.held_until_ms is None:
            _fail("price held with no hold", state)
    elif state.held_until_ms is not None or state.price_held_minor or state.price_paid_minor:
        _fail(f"a {status} certificate holds or paid a price", state)
    pool = state.pool
    if pool is None:
        if status != "issued" and status != "cancelled":
            _fail("posted without a pool", state)
        return
    attached, reserve, pending = pool.attached_minor, pool.reserve_minor, pool.pending_minor
    held, paid, released = pool.held_minor, pool.paid_minor, pool.released_minor
    clawed = pool.clawed_back_minor
    if (attached < 0 or reserve < 0 or pending < 0 or held < 0 or paid < 0 or released < 0
            or pool.voided_minor < 0 or clawed < 0):
        _fail(f"negative amount in {pool}", state)
    if attached + reserve + pending + held + paid + released - clawed != pool.budget_minor:
        _fail(f"conservation: {attached}+{reserve}+{pending}+{held}+{paid}+{released}-{clawed}"
              f" != {pool.budget_minor}", state)
    if pool.cumulative_minor != pending + held + paid + pool.voided_minor:
        _fail("acquisitions != pending + held + paid + voided", state)
    if pool.voided_minor + clawed > released:
        _fail("voided and clawed back beyond released", state)
    if clawed > paid:
        _fail("clawed back more than was paid", state)
    if held and state.held_until_ms is None and not pool.flagged:
        _fail("commission held with no hold and no flag keeping it back", state)
    if state.seller_id in pool.acquired or pool.funder_id in pool.acquired:
        _fail("seller or funder gained on their own certificate", state)
    if (pool.status == "withdrawn" or (status != "issued" and status != "posted")) and (
            attached or reserve or pending):
        _fail(f"a {pool.status} pool of a {status} certificate still holds money", state)
    if not full:
        return
    # The same facts seen from the other side: what was acquired, account by account,
    # is exactly what is now pending, paid out or voided.
    if len(state.members) != len({hop.account_id for hop in chain}):
        _fail("members do not match the chain", state)
    if state.depth.keys() != state.members.keys():
        _fail("a member without a level of sharing", state)
    if pool is not None and state.distinct_circulations + state.ineligible_members != len(
            state.members.keys() - {state.seller_id, pool.funder_id}):
        _fail("distinct circulations + ineligible accounts != accounts in the chain other "
              "than seller and funder", state)
    if sum(pool.acquired.values()) != pool.cumulative_minor:
        _fail("cumulative != sum of acquisitions", state)
    if state.held_until_ms is not None and sum(pool.payouts.values()) != held:
        _fail("held != the sum of held payouts", state)
    kept = sum(pool.payouts.get(a, 0) for a in pool.flagged)
    if state.held_until_ms is None and sum(pool.payouts.values()) - kept != paid:
        _fail("paid != the sum of payouts not kept back", state)
    if state.held_until_ms is None and kept != held:
        _fail("held after the hold != the payouts flags keep back", state)
    if pool.declined.keys() & pool.payouts.keys() or pool.declined.keys() & pool.flagged.keys():
        _fail("a declined commission is still owed or flagged", state)
    if sum(pool.clawed.values()) != clawed:
        _fail("clawed back != the sum of clawbacks", state)
    for account_id, amount in pool.payouts.items():
        if amount > pool.acquired.get(account_id, -1):
            _fail(f"{account_id} is owed more than it acquired", state)
        if pool.clawed.get(account_id, 0) > amount:
            _fail(f"{account_id} was clawed back more than it was paid", state)
    if min(pool.acquired.values(), default=1) <= 0:
        _fail("zero acquisition recorded", state)
