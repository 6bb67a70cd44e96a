"""The API's side of a checkout: ask the payment system, server to server, for a
checkout of one certificate, and send the buyer there.

A purchase counts only when the payment system reports the captured payment (signed
with its own key, which the API never holds: schemas.commands.Purchase); the API only
starts the checkout. ``POST {PAYMENT_SYSTEM_URL}/checkouts`` carries
``Authorization: Bearer <CHECKOUT_TOKEN>``, a shared secret that lets its holder open
checkouts and nothing else (it cannot capture, confirm or refund anything). The
answer's ``url`` must be on ``PAYMENT_SYSTEM_PUBLIC_URL`` (the address browsers use;
by default the same as PAYMENT_SYSTEM_URL): the API redirects buyers nowhere else.

Environment: PAYMENT_SYSTEM_URL (http://127.0.0.1:8090), PAYMENT_SYSTEM_PUBLIC_URL,
CHECKOUT_TOKEN or CHECKOUT_TOKEN_FILE (a development token outside production).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from services.api.errors import Problem
from services.api.guard import origin_of
from services.common.settings import production

DEFAULT_URL = "http://127.0.0.1:8090"
DEV_CHECKOUT_TOKEN = "dev-checkout-token-change-me"


def checkout_token_from_env() -> str:
    """The shared secret between the API and the payment system's checkout endpoint."""
    path = os.environ.get("CHECKOUT_TOKEN_FILE")
    token = Path(path).read_text().strip() if path else os.environ.get("CHECKOUT_TOKEN")
    if token is None:
        if production():
            raise SystemExit("CHECKOUT_TOKEN or CHECKOUT_TOKEN_FILE must be set in production")
        return DEV_CHECKOUT_TOKEN
    if production() and token == DEV_CHECKOUT_TOKEN:
        raise SystemExit("CHECKOUT_TOKEN is the development token; set a secret one")
    if len(token) < 16:
        raise SystemExit("CHECKOUT_TOKEN is shorter than 16 characters")
    return token


@dataclass
class PaymentSystemClient:
    url: str = DEFAULT_URL
    public_url: str = DEFAULT_URL
    token: str = field(default=DEV_CHECKOUT_TOKEN, repr=False)
    timeout_s: float = 5.0
    _session: aiohttp.ClientSession | None = None

    @classmethod
    def from_env(cls) -> PaymentSystemClient:
        url = os.environ.get("PAYMENT_SYSTEM_URL", DEFAULT_URL).rstrip("/")
        return cls(url=url, public_url=os.environ.get("PAYMENT_SYSTEM_PUBLIC_URL", url),
                   token=checkout_token_from_env())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def create(self, *, certificate_id: str, seller_id: str, buyer_id: str,
                     amount_minor: int, currency: str, return_url: str,
                     description: str) -> tuple[str, str]:
        """(checkout id, where to send the buyer), or Problem 502."""
        body = {"certificate_id": certificate_id, "seller_id": seller_id,
                "buyer_id": buyer_id, "amount_minor": amount_minor, "currency": currency,
                "return_url": return_url, "description": description}
        return await self._open("/checkouts", "checkout_id", body)

    async def open_escrow(self, *, funder_id: str, currency: str, return_url: str,
                          description: str, holds: list[dict]) -> tuple[str, str]:
        """(escrow id, where to send the funder) for holding the pools' budgets
        (``holds``: certificate_id, funding_ref, amount_minor, from the engine's state),
        or Problem 502 (409 when the payment system holds a reference already)."""
        body = {"funder_id": funder_id, "currency": currency, "return_url": return_url,
                "description": description, "holds": holds}
        return await self._open("/escrows", "escrow_id", body)

    async def _open(self, path: str, id_field: str, body: dict) -> tuple[str, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        conflict = False
        try:
            async with self._session.post(
                    f"{self.url}{path}", json=body,
                    headers={"Authorization": f"Bearer {self.token}"}) as response:
                conflict = response.status == 409
                answer = await response.json() if response.status == 201 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            answer = None
        if conflict:
            raise Problem(409, "funding_ref_held", "the payment system holds this funding "
                          "already; its confirmation is on its way")
        if not isinstance(answer, dict):
            raise Problem(502, "payment_system_unavailable",
                          "the payment system did not open a checkout; try again")
        opened, url = answer.get(id_field), answer.get("url")
        if (not isinstance(opened, str) or not isinstance(url, str)
                or origin_of(url) != origin_of(self.public_url)):
            raise Problem(502, "payment_system_unavailable",
                          "the payment system answered with an unexpected checkout")
        return opened, url
