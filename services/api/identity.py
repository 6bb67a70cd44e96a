"""Who is asking: the one shape every way of signing in produces.

The built-in account store (sign-up, password) and the shop's identity provider
(OpenID Connect, browser sign-in or bearer tokens) each turn a request into an
``Identity``; everything after that (roles on actions, the facts the gateway attests
in the commands it signs) reads only this. The gateway never takes a role or an
account fact from the request body: only from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    SELLER = "seller"  # may issue offers (and post, cancel, refund its own)
    FUNDER = "funder"  # may attach a pool where the seller named it (or is it)
    REVIEWER = "reviewer"  # may decline a held commission on any certificate


@dataclass(frozen=True, slots=True)
class Identity:
    # stable and unique across sources: the store's own ids, or one derived from the
    # provider's issuer and subject (never the provider's mutable user name)
    account_id: str
    display_name: str
    roles: frozenset[Role]
    # when the account came to exist (the store's sign-up, or the provider's claim);
    # a pool may require a minimum age before an account's shares count
    created_ms: int
    # the store's or provider's word that a person stands behind the account
    verified: bool
    # "local" for the built-in store, else the provider's issuer URL
    source: str

    def has(self, role: Role) -> bool:
        return role in self.roles
