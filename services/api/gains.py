"""An account's gain on one certificate and where it stands: one answer for the share
tree and the account's page, so the two never disagree."""

from __future__ import annotations

from domain import CertificateState

# what each status says on a page
PHRASES = {
    "none": "no gain",
    "claimable": "claimable",
    "pending": "pending: paid if the certificate is bought",
    "held": "held until the hold ends (a refund in the hold reduces it)",
    "flagged": "flagged by the fraud checks: a reviewer looks at it before it is paid",
    "kept_back": "kept back after the hold: a reviewer looks at it before it is paid",
    "declined": "declined in review",
    "paid": "paid out and locked: only a card chargeback within the pool's window "
            "can take it back",
    "clawed": "paid out (part clawed back by a chargeback)",
    "voided": "voided",
}


def gain_of(state: CertificateState, account: str) -> tuple[int, str]:
    """(amount, status): what ``account`` keeps of the certificate's pool (paid less
    what was clawed back), holds, may still be paid (pending), or lost (voided)."""
    pool = state.pool
    acquired = pool.acquired.get(account, 0) if pool is not None else 0
    if pool is None or not acquired:
        return 0, "claimable" if pool is not None and account in pool.claimable else "none"
    if account in pool.declined:
        return pool.declined[account], "declined"
    flagged = account in pool.flagged
    if account in pool.payouts:
        kept = pool.payouts[account]
        if state.held_until_ms is not None:
            return kept, "flagged" if flagged else "held"
        if flagged:
            return kept, "kept_back"
        clawed = pool.clawed.get(account, 0)
        return kept - clawed, "clawed" if clawed else "paid"
    if pool.status == "withdrawn" or state.status in ("cancelled", "closed"):
        return acquired, "voided"
    return acquired, "flagged" if flagged else "pending"


def phrase(state: CertificateState, account: str, status: str) -> str:
    """What a page says of ``account``'s gain: its status in words, and for a declined
    one the reason the seller or reviewer gave."""
    said = PHRASES[status]
    if status == "declined" and state.pool is not None:
        why = state.pool.decline_reasons.get(account)
        if why:
            said = f"{said}: {why}"
    return said
