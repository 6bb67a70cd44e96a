"""A command's outcome in words, for people: what the console says after an action
(accepted, refused and why, or still on its way), never a bare reason code."""

from __future__ import annotations

from collections import Counter

# the refusals a seller or funder meets in the console, in words (others: the code's
# own words, underscores as spaces)
REASON_WORDS = {
    "not_authorized": "only the seller (or the funder it named) may do this",
    "funding_not_confirmed": "the pool is not funded yet: hold its budget in escrow first",
    "funding_already_confirmed": "the pool was funded already",
    "funding_mismatch": "the escrow does not match the pool",
    "funding_ref_used": "this escrow backs another pool already",
    "pool_not_attached": "no commission pool is attached yet",
    "pool_already_attached": "a commission pool is attached already",
    "already_posted": "it is posted already",
    "not_posted": "it is not posted",
    "certificate_purchased": "it was bought already",
    "certificate_ended": "it has ended (cancelled, closed or refunded)",
    "currency_mismatch": "the pool's currency is not the certificate's",
    "attached_exceeds_budget": "the amount on show is more than the budget",
    "invalid_range": "the smallest amount is above the largest",
    "not_purchased": "nobody bought it: there is nothing to refund",
    "refund_exceeds_price": "that is more than is left of the price",
    "refund_ref_used": "this refund was made already",
    "refund_after_hold": "the hold has ended: refund through the payment system",
    "not_reviewer": "only the seller or a reviewer declines; only a reviewer approves",
    "nothing_to_review": "that account has no commission on this certificate",
    "commission_paid": "the commission is paid already",
    "commission_declined": "the commission was declined already",
    "not_flagged": "no fraud flag keeps this commission back",
    "offer_not_owned": "the offer id is another seller's",
    "already_issued": "this offer was issued already",
    "duplicate": "this was done already (the same command again changes nothing)",
    "duplicate_conflict": "a different command was sent under the same id",
}


def reason_words(reason: str) -> str:
    return REASON_WORDS.get(reason, reason.replace("_", " "))


def outcome_message(label: str, outcomes: list[dict[str, str]]) -> tuple[str, str]:
    """(css class ``ok`` / ``refused`` / ``pending``, the sentence) for an action
    (``label``) that sent these commands (their read-model outcomes, {} while pending)."""
    total = len(outcomes)
    accepted = sum(1 for o in outcomes if o.get("status") == "accepted")
    refused = Counter(o.get("reason", "") for o in outcomes if o.get("status") == "rejected")
    waiting = total - accepted - sum(refused.values())
    why = "; ".join(reason_words(r) + (f" ({n} times)" if n > 1 else "")
                    for r, n in sorted(refused.items()))
    if refused:
        done = (f" ({accepted} of {total} done)" if accepted else "")
        return "refused", f"{label}: refused: {why}{done}."
    if waiting:
        return "pending", (f"{label}: sent; {accepted} of {total} applied so far (this page "
                           "updates itself).")
    return "ok", f"{label}: done." if total == 1 else f"{label}: done ({total} of {total})."
