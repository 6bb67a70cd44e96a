"""A sharer's earnings, one line per gain, in words it can check (issue #27.2, #24).

Pure: built from what the read model keeps (services/readmodel/projection.py): the
certificate's state (what the account acquired, holds, was paid, lost and why), the
dates each step happened (``gains:{account}``) and each payout as the netting stage
published it (``payout:{account}``: gross, the offset recovered for the account's
earlier clawbacks, and the net the payment system pays). The page, the JSON
earnings and the CSV are all made from the same ``GainLine``s, so they cannot
disagree, and totals are per currency, never summed across currencies.

A payout's reference is its settlement id: the payment system's idempotency key,
the one reference both sides hold for it.
"""

from __future__ import annotations

import csv
import html
import io
import time
from dataclasses import asdict, dataclass, field

from domain import CertificateState, payments
from schemas.payments import CommissionPayout
from services.api.gains import gain_of, phrase
from services.api.money import money

# why a share took nothing (the ``no_gain`` of certificate_circulated, schemas/events.py)
NO_GAIN_WORDS = {
    "repeat": "you were in this certificate's chain already: a repeat share earns nothing",
    "seller_or_funder": "shares by the certificate's seller or funder earn nothing",
    "account_rules": "your account did not meet this pool's account rules (too new or "
                     "not verified), so the share neither earned nor counted",
    "already_gained": "you had gained on this certificate already (once per certificate)",
    "too_deep": "too deep: only the first {depth} levels of sharing earn on this pool",
    "velocity": "too many shares earned in that minute: the pool's limit per minute was "
                "used up",
    "upstream_none": "this pool pays the account you came via, and you came from the "
                     "catalogue",
    "pool_closed": "the pool was closed when you shared",
}
# the same reasons when the pool pays the account a share came via: they speak of it
UPSTREAM_WORDS = {
    "account_rules": "this pool pays the account you came via, and that account did not "
                     "meet the pool's account rules (too new or not verified) when it joined",
    "already_gained": "this pool pays the account you came via, and it had gained on this "
                      "certificate already (once per certificate)",
    "too_deep": "this pool pays the account you came via, and only the first {depth} levels "
                "of sharing earn on it",
}
# why a share was refused before it happened (schemas/rejections.py)
REFUSAL_WORDS = {
    "pool_withdrawn": "the commission had been withdrawn (a threshold was met) before "
                      "your share",
    "via_not_in_chain": "bad link: the account it names is not in this certificate's "
                        "chain",
    "already_holder": "you hold this certificate already",
    "not_posted": "the certificate was not on sale",
    "certificate_purchased": "the certificate was bought already",
    "certificate_ended": "the certificate was taken off sale",
    "chain_limit": "the certificate reached its limit of shares",
    "unknown_certificate": "no such certificate",
    "nothing_to_claim": "nothing to claim",
    "pool_empty": "nothing was attached to take from",
    "velocity_limit": "too many shares earned in that minute (the pool's limit)",
    "rate_limited": "too many requests",
}

# totals, per currency (minor units)
TOTALS = ("pending_minor", "held_minor", "being_paid_minor", "paid_minor", "offset_minor",
          "net_paid_minor", "failed_minor", "voided_minor", "clawed_back_minor")


def when(ms: int | None) -> str:
    """A moment as pages and the CSV show it (UTC): ``2026-12-07 05:30 UTC``."""
    if ms is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


def when_html(ms: int | None) -> str:
    """A moment on a page: a ``<time>`` element with the UTC instant, whose text the
    pages' script (services/api/assets.py) rewrites to the visitor's own time zone; a
    browser without script shows the UTC text."""
    if ms is None:
        return ""
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
    return f"<time datetime='{iso}'>{when(ms)}</time>"


def dated_html(text: str, ms: int | None) -> str:
    """``text`` escaped for a page, with the moment ``ms`` in it (as ``when`` writes
    it) made a ``<time>`` element (``when_html``)."""
    escaped = html.escape(text)
    if ms is None:
        return escaped
    return escaped.replace(when(ms), when_html(ms), 1)


@dataclass(frozen=True)
class Payout:
    """A commission payout as the netting stage published it (``payments``)."""

    settlement_id: str
    certificate_id: str
    currency: str
    gross_minor: int
    offset_minor: int
    net_minor: int
    at_ms: int

    @classmethod
    def parse(cls, settlement_id: str, raw: str) -> Payout:
        """From the read model's ``"{cert}|{currency}|{gross}|{offset}|{net}|{at_ms}"``."""
        cid, currency, gross, offset, net, at = raw.split("|")
        return cls(settlement_id, cid, currency, int(gross), int(offset), int(net), int(at))


@dataclass
class GainLine:
    certificate_id: str
    product: str
    currency: str
    acquired_ms: int | None
    amount_minor: int  # acquired
    status: str  # services.api.gains: pending, held, flagged, kept_back, paid, clawed, ...
    state: str  # where it stands now, in words
    kept_minor: int  # what the account keeps or may still get (0 when voided, declined)
    lost_minor: int = 0  # voided, declined, or taken off by a refund within the hold
    held_until_ms: int | None = None
    payment_ref: str | None = None  # the payout's settlement id
    payment: str | None = None  # awaiting | settled | parked
    paid_ms: int | None = None
    gross_minor: int | None = None
    offset_minor: int | None = None  # None: netting's figures not read yet
    net_minor: int | None = None
    clawed_back_minor: int = 0
    declined_reason: str | None = None
    history: list[tuple[int | None, str]] = field(default_factory=list)  # (ms, words)

    def as_json(self) -> dict:
        out = asdict(self)
        out["history"] = [{"at_ms": at, "what": what} for at, what in self.history]
        return out


def _payout_of(state: CertificateState, account: str):
    """The account's commission payout on the certificate (the last: a reissue) and its
    track, or None."""
    track = payments.last_payout(state, account, CommissionPayout)
    return None if track is None else (track.settlement.settlement_id, track)


def _bought_with_it(state: CertificateState, account: str, declined_ms: int | None) -> bool:
    """Was the account's gain still there when the certificate was bought?"""
    pool, bought = state.pool, state.purchased_at_ms
    if bought is None or pool is None:
        return False
    if account in pool.payouts or account in pool.clawed:
        return True
    if account in pool.declined:
        return declined_ms is not None and declined_ms >= bought
    return state.status == "refunded"  # voided by a refund within the hold


def _voided_why(state: CertificateState) -> str:
    if state.status in ("cancelled", "closed"):
        return f"the certificate was {state.status} unsold"
    if state.status == "refunded":
        return "the purchase was refunded within the hold"
    return "the commission was withdrawn (a threshold was met) before a purchase"


def gain_line(state: CertificateState, account: str, dates: dict[str, str],
              payouts: dict[str, Payout], product: str) -> GainLine | None:
    """``account``'s gain on the certificate, with its history; None when it gained
    nothing there (the feed says why: ``share_outcome``). ``dates``: the step ->
    ms of this certificate (from ``gains:{account}``)."""
    pool = state.pool
    acquired = pool.acquired.get(account, 0) if pool is not None else 0
    if pool is None or not acquired:
        return None
    cur = state.currency

    def at(step: str) -> int | None:
        raw = dates.get(step)
        return int(raw) if raw else None

    kept, status = gain_of(state, account)
    line = GainLine(state.certificate_id, product, cur, at("acq"), acquired, status, "",
                    0 if status in ("voided", "declined") else kept)
    history = line.history
    history.append((line.acquired_ms, f"acquired {money(acquired, cur)}"))
    if account in pool.flagged or at("flagged"):
        rule = pool.flagged.get(account)
        history.append((at("flagged"), "flagged by the fraud checks" +
                        (f" ({rule})" if rule else "")))
    if at("approved"):
        history.append((at("approved"), "approved by a reviewer"))
    if _bought_with_it(state, account, at("declined")):
        hold_ends = state.purchased_at_ms + pool.hold_s * 1000
        history.append((state.purchased_at_ms, f"bought: held until {when(hold_ends)}"
                        if pool.hold_s else "bought"))
    if state.held_until_ms is not None and status in ("held", "flagged"):
        line.held_until_ms = state.held_until_ms
    reduced = pool.payouts.get(account, acquired) if status != "declined" else acquired
    line.lost_minor = kept if status in ("voided", "declined") else acquired - reduced
    if at("refunded") and reduced < acquired:
        history.append((at("refunded"), f"reduced by {money(acquired - reduced, cur)}: "
                                        "the purchase was partly refunded within the hold"))
    if status == "declined":
        line.declined_reason = pool.decline_reasons.get(account)
        history.append((at("declined"), phrase(state, account, "declined")))
    if status == "voided":
        history.append((at("voided") or at("refunded"), f"voided: {_voided_why(state)}"))
    payout = _payout_of(state, account)
    if payout is not None:
        sid, track = payout
        line.payment_ref, line.payment = sid, track.status
        netted = payouts.get(sid)
        line.gross_minor = netted.gross_minor if netted else track.settlement.amount_minor
        if netted is not None:
            line.offset_minor, line.net_minor = netted.offset_minor, netted.net_minor
        if track.settlement.reissue_of is not None:
            history.append((track.settlement.at_ms, "a chargeback came before the payment "
                            "was made: it was cancelled and sent again, net of the "
                            f"chargeback: {_net_words(line, cur)}"))
        else:
            history.append((at("payable") or (netted.at_ms if netted else None),
                            f"sent to the payment system: {_net_words(line, cur)}"))
        if track.status == "settled":
            line.paid_ms = at("paid")
            history.append((line.paid_ms, f"paid, reference {sid}"))
        elif track.status == "parked":
            history.append((at("parked"), "the payment failed every attempt: an operator "
                                          "looks at it"))
    clawed = pool.clawed.get(account, 0)
    if clawed:
        line.clawed_back_minor = clawed
        history.append((at("clawed"), f"{money(clawed, cur)} clawed back by a chargeback"))
    line.state = _state_words(line, state, account)
    return line


def _net_words(line: GainLine, cur: str) -> str:
    """``gross 1.00 EUR, offset 0.50 EUR, net 0.50 EUR`` (or the gross alone, while the
    netting stage's figures are not read yet)."""
    gross = money(line.gross_minor or 0, cur)
    if line.offset_minor is None:
        return f"gross {gross} (net of any offset once the payment is sent)"
    return (f"gross {gross}, offset {money(line.offset_minor, cur)}, "
            f"net {money(line.net_minor or 0, cur)}")


def _state_words(line: GainLine, state: CertificateState, account: str) -> str:
    """Where the gain stands now, in words."""
    cur, status = line.currency, line.status
    if status == "held":
        return f"held until {when(line.held_until_ms)} (a refund in the hold reduces it)"
    if status == "flagged" and line.held_until_ms is not None:
        return (f"held until {when(line.held_until_ms)}, flagged by the fraud checks: a "
                "reviewer looks at it before it is paid")
    if status in ("declined", "pending", "flagged", "kept_back", "claimable", "none"):
        return phrase(state, account, status)
    if status == "voided":
        return f"voided: {_voided_why(state)}"
    # paid or clawed: where the payout stands
    if line.payment == "settled":
        said = f"paid on {when(line.paid_ms)}, reference {line.payment_ref}: "
    elif line.payment == "parked":
        said = "payment failed every attempt (an operator looks at it): "
    else:
        said = "being paid (sent to the payment system): "
    said += _net_words(line, cur)
    if line.clawed_back_minor:
        said += f"; {money(line.clawed_back_minor, cur)} clawed back by a chargeback"
    return said


def totals(lines: list[GainLine]) -> dict[str, dict[str, int]]:
    """Per currency (never mixed): what is pending, held, being paid, paid (gross, the
    offset taken from it, net), failed, voided or declined, clawed back."""
    out: dict[str, dict[str, int]] = {}
    for line in lines:
        t = out.setdefault(line.currency, dict.fromkeys(TOTALS, 0))
        status = line.status
        gross = line.gross_minor if line.gross_minor is not None else line.kept_minor
        if status in ("voided", "declined"):
            t["voided_minor"] += line.lost_minor
        elif status in ("paid", "clawed") and line.payment == "settled":
            t["paid_minor"] += gross
            t["offset_minor"] += line.offset_minor or 0
            t["net_paid_minor"] += gross - (line.offset_minor or 0)
        elif status in ("paid", "clawed") and line.payment == "parked":
            t["failed_minor"] += gross
        elif status in ("paid", "clawed"):  # published, no result yet
            t["being_paid_minor"] += gross
        elif status in ("held", "kept_back") or (
                status == "flagged" and line.held_until_ms is not None):
            t["held_minor"] += line.kept_minor
        else:  # pending, or flagged before a purchase
            t["pending_minor"] += line.kept_minor
        if status not in ("voided", "declined"):  # a refund within the hold took part
            t["voided_minor"] += line.lost_minor
        t["clawed_back_minor"] += line.clawed_back_minor
    return dict(sorted(out.items()))


CSV_COLUMNS = ("certificate_id", "product", "currency", "acquired_at", "amount_minor",
               "status", "state", "held_until", "paid_at", "payment_ref", "gross_minor",
               "offset_minor", "net_minor", "clawed_back_minor", "declined_reason")


def to_csv(lines: list[GainLine]) -> str:
    """One row per gain; amounts in minor units, moments in UTC."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    out.writerow(CSV_COLUMNS)
    for g in lines:
        out.writerow([g.certificate_id, _cell(g.product), g.currency, when(g.acquired_ms),
                      g.amount_minor, g.status, _cell(g.state), when(g.held_until_ms),
                      when(g.paid_ms), g.payment_ref or "",
                      "" if g.gross_minor is None else g.gross_minor,
                      "" if g.offset_minor is None else g.offset_minor,
                      "" if g.net_minor is None else g.net_minor, g.clawed_back_minor,
                      _cell(g.declined_reason or "")])
    return buf.getvalue()


def _cell(text: str) -> str:
    """A spreadsheet never runs a cell as a formula (CSV injection): a product name or
    a note starting with = + - @ is prefixed with a quote."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@dataclass(frozen=True)
class ShareOutcome:
    """What one of the account's shares of a certificate did: ``counted`` (it earned,
    see the earnings), or why it earned nothing (``why`` a code, ``words``)."""

    counted: bool
    why: str | None
    words: str

    def as_json(self) -> dict:
        return asdict(self)


def share_outcome(state: CertificateState, account: str, why: str | None) -> ShareOutcome:
    """Why ``account``'s share of the certificate counted or not (``why``: the
    recorded ``no_gain`` of its first share, if any)."""
    pool = state.pool
    if pool is not None and pool.acquired.get(account):
        return ShareOutcome(True, None, "your share earned: see your earnings")
    if account == state.seller_id or (pool is not None and account == pool.funder_id):
        why = "seller_or_funder"
    if why in NO_GAIN_WORDS:
        depth = pool.acquisition.max_depth if pool is not None else None
        upstream = pool is not None and pool.acquisition.beneficiary == "upstream"
        words = (UPSTREAM_WORDS if upstream and why in UPSTREAM_WORDS else NO_GAIN_WORDS)[why]
        return ShareOutcome(False, why, words.format(depth=depth))
    if pool is None:
        return ShareOutcome(False, "no_pool", "no commission pool was attached")
    if account in pool.claimable and pool.status == "open" and state.status == "posted":
        return ShareOutcome(False, "claimable", "not claimed yet: claim it on the "
                                                "certificate's page")
    if pool.status != "open":
        return ShareOutcome(False, "pool_withdrawn", "the commission was withdrawn as your "
                            "share met a threshold, before anything was taken")
    if state.status in ("cancelled", "closed"):
        return ShareOutcome(False, "certificate_ended", f"the certificate was {state.status}")
    return ShareOutcome(False, "pool_empty", "nothing was attached to take when you shared")


def refusal_words(reason: str) -> str:
    return REFUSAL_WORDS.get(reason, reason.replace("_", " "))
