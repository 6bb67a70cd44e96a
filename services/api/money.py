"""Amounts as people read them: each currency with its own minor unit (ISO 4217).

Formatting is integer arithmetic on the minor units (never a float): JPY has no
minor unit, BHD has three, most currencies two. Currencies not listed have two.
"""

from __future__ import annotations

# ISO 4217 currencies whose minor unit is not 1/100 (the list 4217 maintains).
MINOR_DIGITS: dict[str, int] = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF",
                     "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}


def minor_digits(currency: str) -> int:
    return MINOR_DIGITS.get(currency, 2)


def money(amount_minor: int, currency: str) -> str:
    """``1234, "EUR"`` -> ``12.34 EUR``; ``1234, "JPY"`` -> ``1,234 JPY``."""
    digits = minor_digits(currency)
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**digits)
    text = f"{whole:,}" + (f".{fraction:0{digits}d}" if digits else "")
    return f"{sign}{text} {currency}"


def amount(amount_minor: int, currency: str) -> str:
    """An amount for an HTML page: never broken across lines (``12.34 EUR`` split at
    its space on a phone reads as two things)."""
    return f"<span class='amount'>{money(amount_minor, currency)}</span>"
