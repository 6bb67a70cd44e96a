"""Money movements of a commission pool (SPEC rules 4, 5, 6 and 8).

Each function moves integers between the pool's buckets and records what it did;
none of them validates a command (handlers do that before anything moves).
"""

from __future__ import annotations

from domain.draw import draw_between
from domain.recorder import Recorder
from domain.state import CertificateState, Pool
from domain.thresholds import due_warnings, first_met
from schemas.commands import (
    AllAttached,
    FixedAmount,
    PercentOfAttached,
    RandomAmount,
    ReplenishFixed,
    ReplenishMatch,
    ReplenishRandom,
)
from schemas.events import (
    AccountAmount,
    CommissionAcquired,
    PoolReplenished,
    PoolWithdrawn,
    ThresholdName,
    WithdrawalWarned,
)
from schemas.payments import BudgetRelease


def may_gain(state: CertificateState, pool: Pool, account_id: str | None) -> bool:
    """An account gains at most once per certificate; seller and funder never do."""
    return (
        account_id is not None
        and pool.status == "open"
        and account_id not in pool.acquired
        and account_id != state.seller_id
        and account_id != pool.funder_id
    )


MINUTE_MS = 60_000


def velocity_used_up(pool: Pool, now_ms: int) -> bool:
    """The pool's acquisitions of the last minute reached its limit. Reads only (a
    refused command changes nothing); :func:`acquire` prunes the window."""
    limit = pool.acquisition.max_acquisitions_per_minute
    if limit is None:
        return False
    since = now_ms - MINUTE_MS
    return sum(1 for t in pool.recent_acquisitions if t > since) >= limit


def meets_account_rules(pool: Pool, facts, now_ms: int) -> bool:
    """The circulating account is old enough and verified, as the pool requires; an
    account the gateway attested nothing about meets no rule."""
    policy = pool.acquisition
    if policy.min_account_age_s is None and not policy.verified_only:
        return True
    if facts is None:
        return False
    if policy.verified_only and not facts.verified:
        return False
    return (policy.min_account_age_s is None
            or now_ms - facts.created_ms >= policy.min_account_age_s * 1000)


def acquisition_amount(pool: Pool, entropy: bytes) -> int:
    policy = pool.acquisition.amount
    if isinstance(policy, AllAttached):
        wanted = pool.attached_minor
    elif isinstance(policy, FixedAmount):
        wanted = policy.amount_minor
    elif isinstance(policy, PercentOfAttached):
        wanted = pool.attached_minor * policy.basis_points // 10_000
    elif isinstance(policy, RandomAmount):
        wanted = draw_between(policy.min_minor, policy.max_minor, entropy, "acquire")
    else:  # pragma: no cover - the union is closed
        raise AssertionError(policy)
    return min(wanted, pool.attached_minor)


def acquire(state: CertificateState, pool: Pool, account_id: str, rec: Recorder) -> int:
    amount = acquisition_amount(pool, rec.entropy)
    if amount == 0:
        return 0  # nothing gained, so the account may still gain later
    pool.attached_minor -= amount
    pool.pending_minor += amount
    pool.cumulative_minor += amount
    pool.acquired[account_id] = amount
    pool.claimable.pop(account_id, None)
    if pool.acquisition.max_acquisitions_per_minute is not None:
        # the last minute's, never more than the limit of them
        since = rec.at_ms - MINUTE_MS
        pool.recent_acquisitions[:] = [t for t in pool.recent_acquisitions if t > since]
        pool.recent_acquisitions.append(rec.at_ms)
    rec.events.append(CommissionAcquired(
        event_id=rec.next_event_id(), certificate_id=rec.certificate_id,
        command_id=rec.command_id, seq=rec.seq, at_ms=rec.at_ms, account_id=account_id,
        amount_minor=amount, currency=state.currency, attached_after_minor=pool.attached_minor,
        cumulative_minor=pool.cumulative_minor))
    return amount


def _top_up(state: CertificateState, pool: Pool, wanted: int, rec: Recorder) -> None:
    amount = min(wanted, pool.reserve_minor)
    if amount <= 0:
        return
    pool.reserve_minor -= amount
    pool.attached_minor += amount
    rec.events.append(PoolReplenished(
        event_id=rec.next_event_id(), certificate_id=rec.certificate_id,
        command_id=rec.command_id, seq=rec.seq, at_ms=rec.at_ms, amount_minor=amount,
        currency=state.currency, attached_after_minor=pool.attached_minor,
        reserve_after_minor=pool.reserve_minor))


def restore_before_acquiring(state: CertificateState, pool: Pool, rec: Recorder) -> None:
    """Seed [120]/[123]: from the second circulation on, the pool is first topped up by
    what earlier circulations took (back to its initial attached amount), then the
    circulating account acquires. The first acquisition is never replenished. Only
    circulations that count are counted (the caller applies this to those only)."""
    policy = pool.replenish
    if isinstance(policy, ReplenishMatch) and policy.from_second_circulation \
            and state.distinct_circulations >= 2:
        _top_up(state, pool, pool.initial_attached_minor - pool.attached_minor, rec)


def replenish(state: CertificateState, pool: Pool, acquired: int, rec: Recorder) -> None:
    """Top the attached amount up from the reserve after a circulation, never beyond
    the reserve: by what was just acquired (default), or a preset or random amount."""
    policy = pool.replenish
    if isinstance(policy, ReplenishMatch):
        if policy.from_second_circulation:
            return  # done before acquiring, see restore_before_acquiring
        wanted = acquired
    elif isinstance(policy, ReplenishFixed):
        wanted = policy.amount_minor
    elif isinstance(policy, ReplenishRandom):
        wanted = draw_between(policy.min_minor, policy.max_minor, rec.entropy, "replenish")
    else:
        return
    _top_up(state, pool, wanted, rec)


def withdraw(state: CertificateState, pool: Pool, threshold: ThresholdName, rec: Recorder) -> None:
    """Close the pool. Void (default): pending acquisitions are voided and the whole
    unpaid budget goes back to the funder. Freeze: pending stays payable on purchase,
    the rest goes back now."""
    mode = pool.thresholds.on_withdraw
    voided: list[AccountAmount] = []
    released = pool.attached_minor + pool.reserve_minor
    if mode == "void":
        voided = [AccountAmount(account_id=a, amount_minor=m)
                  for a, m in pool.acquired.items() if a not in pool.declined]
        released += pool.pending_minor
        pool.voided_minor += pool.pending_minor
        pool.pending_minor = 0
        pool.status = "withdrawn"
    else:
        pool.status = "frozen"
    pool.attached_minor = pool.reserve_minor = 0
    pool.released_minor += released
    rec.event(PoolWithdrawn, threshold=threshold, mode=mode, currency=state.currency,
              voided=voided, voided_minor=sum(v.amount_minor for v in voided),
              released_minor=released)
    rec.settle(BudgetRelease, payee_id=pool.funder_id, amount_minor=released,
               funding_ref=pool.funding_ref, currency=state.currency, reason="withdrawal")


def check_withdrawal(
    state: CertificateState, pool: Pool, now_ms: int, rec: Recorder,
    only: tuple[ThresholdName, ...] = ("display_time", "circulations", "cumulative"),
) -> bool:
    """Withdraw if one of the ``only`` thresholds is met. True if the pool is closed."""
    if pool.status != "open":
        return True
    met = first_met(state, pool, now_ms, only)
    if met is None:
        return False
    withdraw(state, pool, met, rec)
    return True


def raise_warnings(state: CertificateState, pool: Pool, now_ms: int, rec: Recorder) -> None:
    """Warn once per threshold that is close (SPEC rule 7)."""
    for name, value, limit in due_warnings(state, pool, now_ms):
        pool.warned.append(name)
        rec.event(WithdrawalWarned, threshold=name, value=value, limit=limit)
