"""What a certificate page says, computed without I/O (issue #27.3): what one share
earns now, how much of the budget is left, what an ended certificate's status means,
which actions a visitor is offered, why a share earned nothing, a command's outcome
in words, and the catalogue's rows grouped by currency.

Kept apart from the page code so every sentence can be tested against the domain
core (domain.pool.acquisition_amount) rather than against rendered HTML, and so the
certificate page and its live updates (services/api/live.py) say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain import CertificateState
from schemas.commands import (
    AcquisitionPolicy,
    AllAttached,
    FixedAmount,
    PercentOfAttached,
    RandomAmount,
)
from services.api.gains import gain_of
from services.api.money import money
from services.api.outcomes import REASON_WORDS


@dataclass(frozen=True)
class Earns:
    """What one share earns now: ``badge`` a few words for the label and the
    catalogue, ``sentence`` the page's full account (who, when, the odds)."""

    badge: str
    sentence: str
    low_minor: int  # the least a share earns now (the catalogue ranks by it)


def share_earns(policy: AcquisitionPolicy, attached_minor: int, currency: str,
                pool_open: bool = True) -> Earns:
    """The pool's acquisition policy applied to what is attached now, as
    domain.pool.acquisition_amount does (never more than is attached)."""
    if not pool_open:
        return Earns("no commission", "Sharing it earns nothing: the commission was "
                     "withdrawn.", 0)
    if attached_minor <= 0:
        return Earns("nothing now", "Nothing is attached right now: a share earns nothing "
                     "until the pool is topped up from its reserve.", 0)
    who = ("The account that shared it with you earns" if policy.beneficiary == "upstream"
           else "Each share that counts earns")
    when = " when it is claimed" if policy.trigger == "claim" else ""
    amount = policy.amount
    m = lambda x: money(x, currency)  # noqa: E731
    if isinstance(amount, RandomAmount):
        lo, hi = amount.min_minor, amount.max_minor
        if attached_minor <= lo:  # every draw takes what is left
            return Earns(m(attached_minor), f"{who} {m(attached_minor)}{when}: a random "
                         f"amount from {m(lo)} to {m(hi)}, but only {m(attached_minor)} is "
                         "attached now, so every draw gives that.", attached_minor)
        span = hi - lo + 1
        if attached_minor < hi:
            capped = hi - attached_minor + 1  # draws at or above what is attached
            pct = capped * 100 / span
            return Earns(f"{m(lo)} – {m(attached_minor)}",
                         f"{who} a random amount{when} from {m(lo)} to {m(hi)}, every amount "
                         f"equally likely (uniform); only {m(attached_minor)} is attached now, "
                         f"so a draw above it gives {m(attached_minor)} (a {pct:.1f} % "
                         "chance).", lo)
        return Earns(f"{m(lo)} – {m(hi)}",
                     f"{who} a random amount{when} from {m(lo)} to {m(hi)}, every amount "
                     f"equally likely (uniform): on average {m((lo + hi) // 2)}.", lo)
    if isinstance(amount, FixedAmount):
        now = min(amount.amount_minor, attached_minor)
        short = (f" (the pool pays {m(amount.amount_minor)} a share; only {m(now)} is "
                 "attached now)" if now < amount.amount_minor else "")
        return Earns(m(now), f"{who} {m(now)}{when}{short}.", now)
    if isinstance(amount, PercentOfAttached):
        now = attached_minor * amount.basis_points // 10_000
        pct = f"{amount.basis_points / 100:g} %"
        return Earns(m(now), f"{who} {pct} of what is attached{when}: {m(now)} now (less "
                     "for each later share as the attached amount shrinks).", now)
    assert isinstance(amount, AllAttached)
    return Earns(m(attached_minor), f"{who} everything attached{when}: {m(attached_minor)} "
                 "now.", attached_minor)


def budget_left(s: dict) -> str | None:
    """How much of the funder's budget sharers can still earn (attached + reserve), in
    words; None without a pool."""
    if s.get("budget_minor") is None:
        return None
    cur = s["price"]["currency"]
    return (f"{money(s['budget_left_minor'], cur)} of the {money(s['budget_minor'], cur)} "
            "budget is left for sharers")


# what an ended or sold certificate's status means (None: nothing to add)
ENDED = {
    "cancelled": "Cancelled by the seller: it is not for sale any more. Commission that "
                 "was pending was voided and the whole budget went back to the funder.",
    "closed": "Closed: the commission pool reached its end date unsold. Commission that "
              "was pending was voided and the budget went back to the funder.",
    "refunded": "Refunded: the whole price went back to the buyer.",
}


def status_words(state: CertificateState | None, s: dict) -> str | None:
    """The certificate's status in a sentence, for anything but plainly on sale."""
    status = s["status"]
    if status in ENDED:
        return ENDED[status]
    if status == "issued":
        return "Not on sale yet: the seller has not posted it."
    if status == "purchased":
        return "Sold."
    if s.get("pool_status") == "withdrawn":
        return ("On sale, but its commission was withdrawn (a threshold was met): sharing it "
                "earns nothing any more.")
    return None


def refund_words(state: CertificateState | None, s: dict) -> str | None:
    """A refund, partial or whole, with what it did to the commission."""
    refunded = s.get("refunded_minor") or 0
    if not refunded:
        return None
    cur, price = s["price"]["currency"], s["price"]["amount_minor"]
    how = "Refunded" if refunded >= price else "Partly refunded"
    said = f"{how}: {money(refunded, cur)} of the {money(price, cur)} price went back to the buyer"
    if state is not None and state.pool is not None:
        if state.pool.clawed_back_minor:
            return (f"{said}; a card chargeback took back "
                    f"{money(state.pool.clawed_back_minor, cur)} of the paid commission, "
                    "in proportion.")
        if state.commission_refunded_minor:
            return (f"{said} within the hold, so the held commission was reduced in the "
                    "same proportion (what was taken off went back to the funder).")
        return f"{said} after the hold: that is the seller's cost; the commission stays paid."
    return said + "."


def funding_words(s: dict) -> str | None:
    """Where the budget is: in escrow only while the certificate is on sale."""
    if s.get("pool_status") is None:
        return None
    status = s["status"]
    if status in ("cancelled", "closed"):
        return "The budget is no longer in escrow: it went back to the funder."
    if status in ("purchased", "refunded"):
        return ("Bought: the commission earned is held for the sharers; the rest of the "
                "budget went back to the funder.")
    if not s.get("funding_confirmed"):
        return "funding not confirmed yet"
    if s.get("pool_status") != "open":
        return ("funding confirmed; the commission was withdrawn and what was left of the "
                "budget went back to the funder")
    return "funding confirmed: the budget is held in escrow by the payment system"


def actions(s: dict, me: str | None, seller_id: str | None) -> list[str]:
    """What the page offers ``me``: only what the core would accept now. Circulate:
    posted, the pool open, not the holder already (already_holder). Buy: posted, not
    its seller (buyer_is_seller). Ended or sold: nothing."""
    if me is None or s["status"] != "posted":
        return []
    out = []
    if s.get("pool_status") == "open" and s.get("holder") != me:
        out.append("circulate")
    if me != seller_id:
        out.append("buy")
    return out


def why_no_gain(state: CertificateState, account: str) -> str | None:
    """Why ``account``, in the chain, earned nothing on this certificate, as far as the
    state tells (the share that earned nothing is not kept per hop): None when it
    gained, may claim, or is not in the chain."""
    pool = state.pool
    if pool is None or account not in state.members:
        return None
    _, status = gain_of(state, account)
    if status != "none":
        return None
    policy = pool.acquisition
    if account in (state.seller_id, pool.funder_id):
        return "the seller and the funder never earn on their own certificate"
    depth, max_depth = state.depth.get(account, 1), policy.max_depth
    if max_depth is not None and depth > max_depth:
        return (f"too deep: you came in at level {depth} of sharing and only the first "
                f"{max_depth} earn")
    if policy.beneficiary == "upstream":
        return ("this pool pays the account a share came through, not the sharer: you earn "
                "when someone shares it through your link")
    if pool.status != "open":
        return ("the commission was withdrawn (a threshold was met) before your share took "
                "any")
    if policy.has_account_rules:
        return ("your account did not meet the pool's account rules when you shared "
                "(too new or not verified)")
    if policy.max_acquisitions_per_minute is not None:
        return ("the pool's limit of earning shares a minute was used up when you shared")
    return "nothing was attached when you shared"


def shared_again(state: CertificateState, account: str) -> bool:
    """The account shared it more than once: the later shares earned nothing (repeat)."""
    return sum(1 for hop in state.chain if hop.account_id == account) > 1


# a refusal, as the person who sent it reads it
# a sharer's or a buyer's refusals in words; the rest as the console says them
REFUSALS = {
    **REASON_WORDS,
    "already_holder": "you already hold this certificate: someone else has to share it "
                      "before you can again",
    "via_not_in_chain": "the account whose link you followed has not shared this "
                        "certificate (or is you)",
    "pool_withdrawn": "its commission was withdrawn: sharing or claiming earns nothing "
                      "any more",
    "certificate_ended": "it is not for sale any more (cancelled, closed or refunded)",
    "not_posted": "it is not on sale yet",
    "chain_limit": "it has been shared the most times a certificate can be",
    "nothing_to_claim": "you have nothing to claim on it",
    "pool_empty": "nothing is attached to claim from right now; your claim stays open",
    "velocity_limit": "too many shares earned in the last minute; try again in a minute",
    "buyer_is_seller": "a seller cannot buy its own certificate",
    "stale": "it took too long to reach the platform; try again",
    "not_authorized": "you may not do this on this certificate",
    "unknown_certificate": "there is no such certificate",
}
DONE = {"circulate": "Shared: the certificate is in your feed and you hold it now.",
        "claim": "Claimed: your commission is pending until the certificate is bought."}
TRIED = {"circulate": "Not shared", "claim": "Not claimed"}


def outcome_words(outcome: dict, did: str | None) -> tuple[str, str]:
    """(sentence, kind) for a command's outcome: kind "ok", "refused" or "pending"."""
    status = outcome.get("status")
    if status == "accepted":
        return DONE.get(did or "", "Done: the platform applied it."), "ok"
    if status == "rejected":
        reason = outcome.get("reason", "")
        why = REFUSALS.get(reason, reason.replace("_", " ") or "no reason given")
        return f"{TRIED.get(did or '', 'Refused')}: {why}.", "refused"
    return "Sent: waiting for the platform to apply it…", "pending"


def by_currency(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Catalogue rows grouped by currency (a ranking never compares EUR with USD),
    each group in the order given (its own ranking), groups by currency code."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["price"]["currency"], []).append(row)
    return sorted(groups.items())
