"""Offers: an offer of N copies is issued as N certificates with serial numbers."""

from __future__ import annotations

from schemas.commands import IssueCertificate, Terms
from schemas.types import MAX_COPIES

NO_TERMS = Terms()


def certificate_id_for(offer_id: str, serial: int) -> str:
    return f"{offer_id}-{serial:05d}"


def issue_offer(
    *,
    offer_id: str,
    command_id: str,
    seller_id: str,
    name: str,
    price_minor: int,
    currency: str,
    copies: int,
    at_ms: int,
    terms: Terms = NO_TERMS,
    time_limit_s: int | None = None,
) -> list[IssueCertificate]:
    """One IssueCertificate per copy; ids derive from the offer so a retry is idempotent."""
    if not 1 <= copies <= MAX_COPIES:
        raise ValueError(f"copies must be in 1..{MAX_COPIES}")
    if len(certificate_id_for(offer_id, copies)) > 64:
        raise ValueError("offer_id too long: certificate ids are at most 64 characters")
    return [
        IssueCertificate(
            command_id=f"{command_id}:{serial}",
            certificate_id=certificate_id_for(offer_id, serial),
            at_ms=at_ms,
            account_id=seller_id,
            offer_id=offer_id,
            serial=serial,
            copies=copies,
            name=name,
            price_minor=price_minor,
            currency=currency,
            terms=terms,
            time_limit_s=time_limit_s,
        )
        for serial in range(1, copies + 1)
    ]
