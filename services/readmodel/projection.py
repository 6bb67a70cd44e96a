"""What a user sees, computed from a certificate's state after each accepted command.

The read model consumes ``accepted`` (one ordered stream per certificate), applies
each command with the domain core to its own copy of the state, and writes, in ONE
Redis transaction, the projections and the state with its sequence number. A
redelivered command (seq at or below the stored one) is skipped, so at-least-once
delivery gives exactly-once projections, and replaying the topic from the start
after Redis is wiped rebuilds the same projections.

Keys (all under ``rm:{prefix}``; the part in braces is the key's Redis Cluster hash
tag, so the keys one script writes together share a slot: services/readmodel/store.py):
  state:{cert}          msgpack CertificateState (the read model's own copy)
  cert:{cert}           hash: the certificate page
  catalogue:{catalogue}:commission  sorted set: posted, unsold certificates by
                        attached amount
  catalogue:{catalogue}:deadline    the same by display deadline (ms; none: 2^53)
  offer:{offer}         hash: copies, purchased
  sells:{seller}        sorted set: the seller's offer ids, by issue time (its console)
  funds:{funder}        sorted set: offer ids naming the account as funder, by issue
                        time (its pools page; services/api/console.py)
  feed:{account}        sorted set: certificates the account holds, by time
  shared:{account}      sorted set: certificates the account ever circulated, by time
  claim:{account}       sorted set: certificates where it may claim (the pages check
                        the state before offering it: a claim may have lapsed since)
  earn:{account}        hash: "{currency}:acquired|held|payable|paid|failed|voided|
                        clawed_back" (minor units): held until the hold ends, then
                        payable (published to the payment system), paid once it
                        reports the payout settled, failed if it failed every attempt
  gains:{account}       hash: when each of the account's gains changed, "{cert}|{step}"
                        -> ms (acq, flagged, approved, payable, paid, parked, refunded,
                        clawed, declined, voided), and "{cert}|why": why its share took
                        nothing (the event's no_gain; not for a repeat): the earnings
                        and feed pages (services/api/earnings.py)
  payout:{account}      hash: settlement id -> "{cert}|{currency}|{gross}|{offset}|{net}|
                        {at_ms}", a commission payout as the netting stage published it
                        on ``payments`` (project_payment): idempotent, so no seq guard
  cmd:{command id}      hash: the command's outcome (accepted or rejected with reason)
  applied:{tag}         hash, Redis Cluster only: certificate -> the last seq whose
                        writes to the keys of this tag are in (store.py)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import msgspec

from domain import CertificateState
from schemas.commands import RandomAmount, ReplenishRandom
from schemas.events import (
    AcquisitionClaimable,
    CertificateCirculated,
    CertificateEnded,
    CertificateIssued,
    CertificatePurchased,
    CommissionAcquired,
    CommissionApproved,
    CommissionDeclined,
    CommissionFlagged,
    Event,
    HoldReleased,
    PaymentReported,
    PoolWithdrawn,
    PurchaseRefunded,
)
from schemas.payments import Clawback, CommissionPayout, Settlement

NO_DEADLINE = 2**53


class Keys:
    """Key names. Ids never contain braces (schemas.types.Id), so the braces around
    an id are its hash tag (the prefix must hold none)."""

    def __init__(self, prefix: str = "") -> None:
        self.p = f"rm:{prefix}"

    def state(self, cid: str) -> str:
        return f"{self.p}state:{{{cid}}}"

    def cert(self, cid: str) -> str:
        return f"{self.p}cert:{{{cid}}}"

    def offer(self, oid: str) -> str:
        return f"{self.p}offer:{{{oid}}}"

    def seller_offers(self, account: str) -> str:
        return f"{self.p}sells:{{{account}}}"

    def funder_offers(self, account: str) -> str:
        return f"{self.p}funds:{{{account}}}"

    def feed(self, account: str) -> str:
        return f"{self.p}feed:{{{account}}}"

    def shared(self, account: str) -> str:
        return f"{self.p}shared:{{{account}}}"

    def claims(self, account: str) -> str:
        return f"{self.p}claim:{{{account}}}"

    def earnings(self, account: str) -> str:
        return f"{self.p}earn:{{{account}}}"

    def gains(self, account: str) -> str:
        return f"{self.p}gains:{{{account}}}"

    def payouts(self, account: str) -> str:
        return f"{self.p}payout:{{{account}}}"

    def outcome(self, command_id: str) -> str:
        return f"{self.p}cmd:{{{command_id}}}"

    def applied(self, tag: str) -> str:
        return f"{self.p}applied:{{{tag}}}"

    @property
    def progress(self) -> str:
        """Where a rebuild or catching up stands (services/readmodel/progress.py)."""
        return f"{self.p}progress"

    @property
    def by_commission(self) -> str:
        return f"{self.p}catalogue:{{catalogue}}:commission"

    @property
    def by_deadline(self) -> str:
        return f"{self.p}catalogue:{{catalogue}}:deadline"


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: between its first braces, else all."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


@dataclass
class Writes:
    """Redis writes for one command, applied atomically by the store."""

    hset: dict[str, dict[str, str]] = field(default_factory=dict)
    hincrby: list[tuple[str, str, int]] = field(default_factory=list)
    zadd: list[tuple[str, str, float]] = field(default_factory=list)
    zrem: list[tuple[str, str]] = field(default_factory=list)


def display_deadline_ms(state: CertificateState) -> int | None:
    """When the display-time threshold is met, if the certificate has one and is posted."""
    pool = state.pool
    if pool is None or pool.display_limit_ms is None or state.posted_at_ms is None:
        return None
    return state.posted_at_ms + pool.display_limit_ms


def odds(state: CertificateState) -> list[dict]:
    """The published odds of every random amount the pool draws: uniform over a closed
    range, drawn by the sequencer from a secret (domain.draw)."""
    pool = state.pool
    out = []
    if pool is None:
        return out
    amount = pool.acquisition.amount
    if isinstance(amount, RandomAmount):
        out.append({"draw": "acquisition", "distribution": "uniform",
                    "min_minor": amount.min_minor, "max_minor": amount.max_minor})
    if isinstance(pool.replenish, ReplenishRandom):
        out.append({"draw": "replenishment", "distribution": "uniform",
                    "min_minor": pool.replenish.min_minor,
                    "max_minor": pool.replenish.max_minor})
    return out


def page(state: CertificateState) -> dict[str, str]:
    """The certificate page: status, holder, pool, and how close each threshold is."""
    pool = state.pool
    out = {
        "id": state.certificate_id, "offer_id": state.offer_id, "serial": str(state.serial),
        "seller_id": state.seller_id, "price_minor": str(state.price_minor),
        "currency": state.currency, "status": state.status, "seq": str(state.seq),
        "holder": state.holder or "", "chain_length": str(len(state.chain)),
    }
    if state.posted_at_ms is not None:
        out["posted_at_ms"] = str(state.posted_at_ms)
    if state.buyer_id is not None:
        out.update({
            "held_until_ms": "" if state.held_until_ms is None else str(state.held_until_ms),
            "refunded_minor": str(state.refunded_minor)})
    if pool is not None:
        deadline = display_deadline_ms(state)
        thresholds = {
            # the threshold counts distinct accounts other than the seller and funder
            "circulations": [state.distinct_circulations, pool.thresholds.max_circulations],
            "cumulative_minor": [pool.cumulative_minor, pool.cumulative_limit_minor],
            "display_ms": [None, pool.display_limit_ms],
        }
        out.update({
            "pool_status": pool.status, "attached_minor": str(pool.attached_minor),
            "reserve_minor": str(pool.reserve_minor), "budget_minor": str(pool.budget_minor),
            "funder_id": pool.funder_id, "warnings": json.dumps(sorted(pool.warned)),
            "thresholds": json.dumps(thresholds),
            "display_deadline_ms": "" if deadline is None else str(deadline),
            "funding_confirmed": "true" if pool.funding_confirmed else "false",
            "odds": json.dumps(odds(state)),
            "acquisition": msgspec.json.encode(pool.acquisition).decode(),
            "held_minor": str(pool.held_minor), "hold_s": str(pool.hold_s),
            "closes_at_ms": "" if pool.close_after_s is None or state.posted_at_ms is None
            else str(state.posted_at_ms + pool.close_after_s * 1000),
        })
    return out


def _dated(w: Writes, k: Keys, account: str, cid: str, step: str, at_ms: int | str) -> None:
    """When ``account``'s gain on ``cid`` reached ``step`` (gains:{account})."""
    w.hset.setdefault(k.gains(account), {})[f"{cid}|{step}"] = str(at_ms)


def project_payment(k: Keys, s: Settlement) -> Writes | None:
    """A record of ``payments`` (the netting stage's output): a commission payout's
    gross, the offset taken for the payee's clawbacks and the net paid, under its
    settlement id. Every attempt of a payout carries the same amounts
    (domain/netting.py), so writing it again writes the same: no guard is needed."""
    if not isinstance(s, CommissionPayout):
        return None
    gross = s.amount_minor if s.gross_minor is None else s.gross_minor
    w = Writes()
    w.hset[k.payouts(s.payee_id)] = {s.settlement_id: (
        f"{s.certificate_id}|{s.currency}|{gross}|{s.offset_minor}|{s.amount_minor}|{s.at_ms}")}
    return w


def project(k: Keys, state: CertificateState, events: list[Event],
            settlements: list[Settlement], with_page: bool = True) -> Writes:
    """What one command writes. ``with_page=False``: the certificate page's fields
    that only its events carry (name, terms), not the page itself (a batch computes
    the page once, after the certificate's last command in it: services/readmodel/
    store.py)."""
    w = Writes()
    cid = state.certificate_id
    w.hset[k.cert(cid)] = page(state) if with_page else {}
    pool = state.pool
    released = False
    for e in events:
        if isinstance(e, CertificateIssued):
            w.hset[k.cert(cid)].update({"name": e.name, "terms": json.dumps(
                {"trade": e.terms.trade, "logistics": e.terms.logistics,
                 "insurance": e.terms.insurance, "trade_rules": e.terms.trade_rules})})
            w.hset[k.offer(e.offer_id)] = {"copies": str(e.copies)}
            if e.serial == 1:  # the console's index: one entry per offer, not per copy
                w.zadd.append((k.seller_offers(e.seller_id), e.offer_id, e.at_ms))
                if e.funder_id is not None:
                    w.zadd.append((k.funder_offers(e.funder_id), e.offer_id, e.at_ms))
        elif isinstance(e, CertificateCirculated):
            if e.previous_holder is not None:
                w.zrem.append((k.feed(e.previous_holder), cid))
            w.zadd.append((k.feed(e.account_id), cid, e.at_ms))
            w.zadd.append((k.shared(e.account_id), cid, e.at_ms))
            if e.no_gain is not None and e.no_gain != "repeat":  # the first share's why
                _dated(w, k, e.account_id, cid, "why", e.no_gain)
        elif isinstance(e, AcquisitionClaimable):
            w.zadd.append((k.claims(e.account_id), cid, e.at_ms))
        elif isinstance(e, CommissionAcquired):
            w.zrem.append((k.claims(e.account_id), cid))
            w.hincrby.append((k.earnings(e.account_id), f"{e.currency}:acquired", e.amount_minor))
            _dated(w, k, e.account_id, cid, "acq", e.at_ms)
        elif isinstance(e, PoolWithdrawn):
            for v in e.voided:
                w.hincrby.append((k.earnings(v.account_id), f"{e.currency}:voided",
                                  v.amount_minor))
                _dated(w, k, v.account_id, cid, "voided", e.at_ms)
        elif isinstance(e, CertificatePurchased):
            w.hincrby.append((k.offer(state.offer_id), "purchased", 1))
            # held: everything with a hold; with none, what a fraud flag keeps back
            # (paid on approval, voided on decline)
            for h in e.held:
                w.hincrby.append((k.earnings(h.account_id), f"{e.currency}:held", h.amount_minor))
        elif isinstance(e, PurchaseRefunded):
            for v in e.voided:  # within the hold: held no more, voided
                w.hincrby.append((k.earnings(v.account_id), f"{e.currency}:held", -v.amount_minor))
                w.hincrby.append((k.earnings(v.account_id), f"{e.currency}:voided",
                                  v.amount_minor))
                _dated(w, k, v.account_id, cid, "refunded", e.at_ms)
            for v in e.clawed_back:  # a chargeback within the window
                _dated(w, k, v.account_id, cid, "clawed", e.at_ms)
        elif isinstance(e, CertificateEnded):
            for v in e.voided:
                w.hincrby.append((k.earnings(v.account_id), f"{e.currency}:voided",
                                  v.amount_minor))
                _dated(w, k, v.account_id, cid, "voided", e.at_ms)
        elif isinstance(e, PaymentReported) and e.settlement_kind == "commission_payout" and (
                e.outcome not in ("retried", "cancelled")):
            # payable until the payment system says: settled (paid) or parked (failed);
            # a payout cancelled by a chargeback is sent again, payable still
            done = "paid" if e.outcome == "settled" else "failed"
            w.hincrby.append((k.earnings(e.payee_id), f"{e.currency}:payable", -e.amount_minor))
            w.hincrby.append((k.earnings(e.payee_id), f"{e.currency}:{done}", e.amount_minor))
            _dated(w, k, e.payee_id, cid, "paid" if done == "paid" else "parked", e.at_ms)
        elif isinstance(e, HoldReleased):
            released = True
        elif isinstance(e, CommissionDeclined):
            # a review voided it: pending (acquired, not bought yet) or held
            if e.stage == "held":
                w.hincrby.append((k.earnings(e.sharer_id), f"{e.currency}:held",
                                  -e.amount_minor))
            w.hincrby.append((k.earnings(e.sharer_id), f"{e.currency}:voided", e.amount_minor))
            _dated(w, k, e.sharer_id, cid, "declined", e.at_ms)
        elif isinstance(e, CommissionFlagged) and not e.paid:  # a late flag keeps nothing
            _dated(w, k, e.sharer_id, cid, "flagged", e.at_ms)
        elif isinstance(e, CommissionApproved):
            _dated(w, k, e.sharer_id, cid, "approved", e.at_ms)
            if e.paid_minor:
                released = True  # the payout kept back past the hold is published now
    for s in settlements:
        if isinstance(s, CommissionPayout) and s.attempt == 1:  # a retry: the same money
            w.hincrby.append((k.earnings(s.payee_id), f"{s.currency}:payable", s.amount_minor))
            _dated(w, k, s.payee_id, cid, "payable", s.at_ms)
            if released:
                w.hincrby.append((k.earnings(s.payee_id), f"{s.currency}:held", -s.amount_minor))
        elif isinstance(s, Clawback) and s.of_kind == "commission_payout" and s.attempt == 1:
            w.hincrby.append((k.earnings(s.payee_id), f"{s.currency}:clawed_back",
                              s.amount_minor))
    if state.status == "posted" and pool is not None:
        w.zadd.append((k.by_commission, cid,
                       pool.attached_minor if pool.status == "open" else 0))
        # a withdrawn pool's deadline no longer matters: it sorts last, with the timeless
        end = display_deadline_ms(state) if pool.status == "open" else None
        w.zadd.append((k.by_deadline, cid, NO_DEADLINE if end is None else end))
    elif state.status != "issued":  # bought, refunded, cancelled or closed
        w.zrem += [(k.by_commission, cid), (k.by_deadline, cid)]
    return w
