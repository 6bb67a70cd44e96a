"""Offers: an offer of N copies is issued as N certificates with serial numbers.

An offer id is ``{seller id}~{name}`` and belongs to that seller: only the seller
named in it may issue copies (``offer_not_owned`` otherwise). Ownership is by
construction rather than first-come because the pipeline decides each certificate
alone, in its own partition: a register of "who issued offer X first" would have to
be read across certificates, which cannot be decided deterministically in order.
The name part holds no ``~``, so the owner is everything before the last ``~`` and
every offer id has exactly one owner.
"""

from __future__ import annotations

from schemas.commands import IssueCertificate, Terms
from schemas.types import MAX_COPIES

NO_TERMS = Terms()


OWNER_SEPARATOR = "~"


def certificate_id_for(offer_id: str, serial: int) -> str:
    return f"{offer_id}-{serial:05d}"


def offer_id_for(seller_id: str, name: str) -> str:
    """The offer id of ``seller_id``'s offer called ``name`` (no ``~`` in ``name``)."""
    if not name or OWNER_SEPARATOR in name:
        raise ValueError("an offer name is non-empty and holds no '~'")
    return f"{seller_id}{OWNER_SEPARATOR}{name}"


def offer_owner(offer_id: str) -> str | None:
    """The seller an offer id belongs to, or None if it names none."""
    owner, sep, name = offer_id.rpartition(OWNER_SEPARATOR)
    return owner if sep and owner and name else None


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
    funder_id: str | None = None,
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
            funder_id=funder_id,
        )
        for serial in range(1, copies + 1)
    ]
