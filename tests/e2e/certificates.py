"""Certificates as the e2e tests set them up: issued by a seller under its own offer
id, a pool attached by the funder the seller named, the payment system's escrow
confirmation, then posted. Shared so no test hand-writes the four setup commands."""

from __future__ import annotations

from functools import cache

from domain.draw import entropy_at
from domain.offer import certificate_id_for, offer_id_for
from domain.state import CertificateState
from schemas import commands as c
from services.common.auth import Keyring


def cert_id(name: str, seller: str = "seller") -> str:
    """Serial 1 of ``seller``'s offer ``name``."""
    return certificate_id_for(offer_id_for(seller, name), 1)


def setup(cert: str, at_ms: int, *, price_minor: int, budget_minor: int, attached_minor: int,
          currency: str = "EUR", name: str = "Test item", funder: str = "funder",
          time_limit_s: int | None = None, **pool) -> list[c.Command]:
    """Issue, attach, confirm the escrow, post: command ids ``{cert}-issue`` etc."""
    offer_id, _, serial = cert.rpartition("-")
    seller = offer_id.rpartition("~")[0]
    ref = f"escrow-{cert}"
    return [
        c.IssueCertificate(command_id=f"{cert}-issue", certificate_id=cert, at_ms=at_ms,
                           account_id=seller, offer_id=offer_id, serial=int(serial),
                           copies=int(serial), name=name, price_minor=price_minor,
                           currency=currency, time_limit_s=time_limit_s,
                           funder_id=None if funder == seller else funder),
        c.AttachPool(command_id=f"{cert}-attach", certificate_id=cert, at_ms=at_ms,
                     account_id=funder, funding_ref=ref, currency=currency,
                     budget_minor=budget_minor, attached_minor=attached_minor, **pool),
        c.ConfirmFunding(command_id=f"{cert}-confirm", certificate_id=cert, at_ms=at_ms,
                         funding_ref=ref, amount_minor=budget_minor, currency=currency),
        c.PostCertificate(command_id=f"{cert}-post", certificate_id=cert, at_ms=at_ms,
                          account_id=seller),
    ]


def paid(cert: str, price_minor: int, payment_ref: str | None = None,
         currency: str = "EUR") -> dict:
    """The payment system's report of a captured payment of the whole price, as the
    fields of a ``Purchase`` (less the buyer and the ids)."""
    seller = cert.rpartition("-")[0].rpartition("~")[0]
    return {"seller_id": seller, "payment_ref": payment_ref or f"pay-{cert}",
            "captured_minor": price_minor, "currency": currency}


def sequencer_entropy(state: CertificateState | None, certificate_id: str) -> bytes:
    """The draw entropy the services' sequencer uses (same keyring as the pipeline:
    the environment's, else the development keys)."""
    return entropy_at(_draw_secret(), state, certificate_id)


@cache
def _draw_secret() -> bytes:
    return Keyring.from_env().first("draw").secret
