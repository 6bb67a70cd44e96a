"""Roles on actions: the gateway asks here before it signs a command.

Who may do what (issue 23): issuing offers needs ``seller``; attaching a pool needs
``funder`` or being the certificate's seller (the core then checks that the account
is the seller or the funder the seller named); reviewing a held commission needs
``reviewer`` or being the certificate's seller. A refusal is 403 ``missing_role``
with the roles that would do, before anything is signed or sent.

How an account gets a role: an operator grants it
(``python -m services.api.accounts grant <login> seller``); a provider's account
gets the roles its claims map to (the identity provider module); outside production
a visitor may choose the roles in ``API_SIGNUP_ROLES`` (default ``seller,funder``)
when signing up ("I want to sell"), so a fresh ``make run`` can be tried end to end;
in production that list is empty unless the operator sets it. ``reviewer`` is never
self-chosen.
"""

from __future__ import annotations

import os

from aiohttp import web

from domain.offer import offer_owner
from services.api.errors import Problem
from services.api.identity import Identity, Role
from services.common.settings import production


def seller_of(certificate_id: str) -> str | None:
    """The seller a certificate id names (``{seller}~{offer}-{serial}``), or None."""
    return offer_owner(certificate_id)


def require(identity: Identity, *roles: Role, or_seller_of: str | None = None) -> None:
    """Problem 403 ``missing_role`` unless ``identity`` has one of ``roles`` or is
    the seller of the certificate ``or_seller_of``."""
    if any(identity.has(r) for r in roles):
        return
    if or_seller_of is not None and seller_of(or_seller_of) == identity.account_id:
        return
    needed = " or ".join(str(r) for r in roles)
    also = " (or be the certificate's seller)" if or_seller_of is not None else ""
    refusal = Problem(403, "missing_role", f"this needs the {needed} role{also}")
    refusal.response = web.json_response(
        {"error": "missing_role", "detail": f"this needs the {needed} role{also}",
         "required_roles": [str(r) for r in roles]}, status=403)
    raise refusal


def signup_roles() -> frozenset[Role]:
    """The roles a visitor may choose at sign-up (``API_SIGNUP_ROLES``)."""
    default = "" if production() else "seller,funder"
    words = os.environ.get("API_SIGNUP_ROLES", default).split(",")
    chosen = frozenset(Role(w.strip()) for w in words if w.strip())
    if Role.REVIEWER in chosen:
        raise SystemExit("API_SIGNUP_ROLES: reviewer is granted by an operator, never chosen")
    return chosen
