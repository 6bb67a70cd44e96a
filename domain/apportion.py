"""Scaling every account's commission down by a refund, without rounding against
anyone (SPEC 9: a refund within the hold reduces the commission in proportion).

Each account's exact share of what is left is ``q = acquired * left / price``. After
every counted refund:

* every account keeps at most its share rounded up and never more than it kept
  before (a payout only shrinks: what it gives goes back to the funder; a growth
  would be money from nowhere);
* together they keep at most ``floor(sum(q))``, the total rounded once (exactly that
  when nothing was rounded before), not each account rounded down on its own: that took a unit from every sharer, so a refund of 1 on a
  price of 10,000 took 1,000 from 1,000 sharers of 100 (the proportion is 10) and a
  seller funding its own pool got the difference;
* to get there, accounts above their share rounded down give one unit each, those
  whose share is least above a whole unit first (the smallest remainders: the
  largest keep their unit, as in largest-remainder rounding), ties in an order
  drawn from the certificate and the account (not the chain's: its first accounts,
  often the seller's own circle, would win every tie).

So every account ends within one unit of its exact share, and no account gains from
another's size: a highest-averages split (D'Hondt), tried first, sent every small
sharer's fraction to the largest account, so a seller who declined a huge Sybil
acquisition got a unit back from every honest sharer again (an attacker's review).

The split starts from what each account keeps now, not from scratch: the result can
depend on the order of the refunds (by less than a unit an account: several small
refunds can leave the accounts together less than one refund of their sum, the
funder gets the difference, a review found up to about half a unit per account),
and in return it is monotone by construction and needs no state beyond the payouts.
Accounts declined meanwhile are simply not in ``kept`` (the others then keep at most
their ceilings, perhaps a unit more than the new total rounded down). Ties are drawn
from the certificate id, which is public: an account id ground to win them wins at
most a unit per certificate.
"""

from __future__ import annotations

import hashlib


def scaled_down(kept: dict[str, int], acquired: dict[str, int], left: int, price: int,
                salt: str) -> dict[str, int]:
    """What each account of ``kept`` (what it keeps now) keeps once only ``left`` of
    ``price`` counts, ``0 <= left <= price``; ``salt`` (the certificate id) orders
    ties."""
    if not 0 <= left <= price or price <= 0:
        raise ValueError(f"left {left} of price {price}")
    new: dict[str, int] = {}
    floors: dict[str, int] = {}
    remainders: dict[str, int] = {}
    for account, amount in kept.items():
        whole, remainder = divmod(acquired[account] * left, price)
        new[account] = min(amount, whole + (remainder > 0))
        floors[account], remainders[account] = whole, remainder
    target = sum(acquired[account] for account in kept) * left // price
    over = sum(new.values()) - target
    if over > 0:
        # above its share rounded down means at its share rounded up (remainder > 0);
        # there are always at least ``over`` of them: the others keep at most their
        # share rounded down, and the target is at least the sum of those
        above = [a for a in kept if remainders[a] and new[a] > floors[a]]
        above.sort(key=lambda a: (remainders[a], _tie(salt, a)))
        for account in above[:over]:
            new[account] -= 1
    return new


def _tie(salt: str, account: str) -> bytes:
    return hashlib.sha256(f"{salt}\x00{account}".encode()).digest()
