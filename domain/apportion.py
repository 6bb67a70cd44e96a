"""Scaling every account's commission down by one refund, without rounding against
anyone (SPEC 9: a refund within the hold reduces the commission in proportion).

What is left of the commission after refunds is ``floor(V * left / price)`` for the
``V`` the accounts acquired together. Rounding each account down on its own takes up
to one minor unit from every account: a refund of 1 on a price of 10,000 took 1,000
from 1,000 sharers of 100 each (10 is their proportion), and a seller funding its own
pool got the difference back. So the total is rounded once, and it is shared out by
highest averages (D'Hondt): each account gets at least its own share rounded down,
the units rounding leaves go where ``acquired / (given + 1)`` is largest, and a tie
goes to the account earlier in the chain (the order ``acquired`` keeps).

Why this method and not largest remainders: refunds accumulate, and an account's
entitlement must never grow when more is refunded (its payout only ever shrinks:
what it loses goes back to the funder; a growth would be money from nowhere). A
divisor method is house-monotone: the allocation for a smaller total is the one for
the larger total less some units, never a unit moved from one account to another.
Largest remainders is not (the Alabama paradox). The set of accounts is fixed once
the certificate is bought (``acquired`` gains no one after it; a declined account
keeps its place and is simply not paid), so every refund shares among the same
accounts.

How: the accounts' shares rounded down are always within the D'Hondt allocation
(each such unit's average is at least ``V / total``, every other unit's below it),
so only the fewer than ``len(acquired)`` units that rounding leaves are placed one by
one, by a heap of the next units' averages (exact integers, below).
"""

from __future__ import annotations

import heapq


def scaled(acquired: dict[str, int], left: int, price: int) -> dict[str, int]:
    """Each account's part of ``floor(sum(acquired) * left / price)``, ``0 <= left <=
    price``: in proportion to what it acquired, by highest averages, ties to the
    earlier account (see the module's text)."""
    if not 0 <= left <= price or price <= 0:
        raise ValueError(f"left {left} of price {price}")
    whole = sum(acquired.values())
    total = whole * left // price
    if total == whole:
        return dict(acquired)
    if total == 0:
        return dict.fromkeys(acquired, 0)
    given = {account: amount * total // whole for account, amount in acquired.items()}
    short = total - sum(given.values())
    # the average of an account's next unit, amount / (given + 1), as an exact integer
    # key: two averages with denominators up to ``top`` differ by at least 1 / top**2,
    # so scaled by top**2 and rounded down they keep their order, and equal ones stay
    # equal (exact fractions cost 20 times as much: a refund on a chain of 10,000)
    top = max(acquired.values()) + 1
    scale = top * top
    # (-key, chain position, account): the largest average first, the earlier account
    # on a tie
    heap = [(-(amount * scale // (given[account] + 1)), position, account)
            for position, (account, amount) in enumerate(acquired.items()) if amount]
    heapq.heapify(heap)
    for _ in range(short):
        _, position, account = heapq.heappop(heap)
        given[account] += 1
        heapq.heappush(heap, (-(acquired[account] * scale // (given[account] + 1)),
                              position, account))
    return given
