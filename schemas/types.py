"""Constrained scalar types shared by every contract.

Limits are part of the contract (TigerBeetle style: put a limit on everything):
ids are short printable tokens, amounts are non-negative integers small enough that
the sum of every amount of one certificate fits in a signed 64-bit integer, which is
what payment systems downstream store.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

# 10^15 minor units (10 trillion of a 2-decimal currency) per amount; the sum of a
# certificate's budget and price stays below 2^63 with a wide margin.
MAX_AMOUNT_MINOR = 10**15
MAX_COPIES = 10_000
# Unix epoch milliseconds; 2^53 keeps them exact in JSON consumers that use doubles.
MAX_TIMESTAMP_MS = 2**53
MAX_DURATION_S = 100 * 365 * 24 * 3600
BASIS_POINTS_MAX = 10_000

Id = Annotated[
    str,
    Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@~-]*$",
         description="An opaque identifier: 1-64 characters of [A-Za-z0-9._:@~-]."),
]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 alphabetic code.")]
AmountMinor = Annotated[
    int, Meta(ge=0, le=MAX_AMOUNT_MINOR, description="An amount in the currency's minor unit.")
]
PositiveAmountMinor = Annotated[int, Meta(ge=1, le=MAX_AMOUNT_MINOR)]
TimestampMs = Annotated[int, Meta(ge=0, le=MAX_TIMESTAMP_MS, description="Unix epoch milliseconds.")]
DurationS = Annotated[int, Meta(ge=1, le=MAX_DURATION_S)]
HoldS = Annotated[int, Meta(ge=0, le=MAX_DURATION_S, description="Seconds; 0: none.")]
BasisPoints = Annotated[int, Meta(ge=0, le=BASIS_POINTS_MAX, description="1/100 of a percent.")]
PositiveBasisPoints = Annotated[int, Meta(ge=1, le=BASIS_POINTS_MAX)]
Count = Annotated[int, Meta(ge=1, le=10**9)]
Text = Annotated[str, Meta(max_length=2000)]
ShortText = Annotated[str, Meta(min_length=1, max_length=200)]
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{32,64}$")]
