"""A small driver for scenario tests: builds commands with fresh ids and a clock.

It only assembles inputs; every expectation in the tests is written from the seed's
own numbers, never read back from the code under test.
"""

from __future__ import annotations

import itertools

import msgspec

from domain import Accepted, CertificateState, Duplicate, Rejected, check_invariants, handle
from domain.draw import entropy_at
from schemas import commands as c
from schemas.payments import BudgetRelease, CommissionPayout, SellerPayment

DAY_MS = 24 * 3600 * 1000
# The secret draw key of the tests' sequencer (services hold theirs in the keyring).
DRAW_SECRET = b"test-draw-secret-0123456789"
OFFER = "seller~offer-1"
CERT = f"{OFFER}-00001"


class Scenario:
    def __init__(self, certificate_id: str = CERT, *, start_ms: int = 1_700_000_000_000):
        self.certificate_id = certificate_id
        self.now_ms = start_ms
        self.state: CertificateState | None = None
        self.events: list = []
        self.settlements: list = []
        self._ids = itertools.count(1)

    # --- driving --------------------------------------------------------------------

    def advance(self, ms: int) -> None:
        self.now_ms += ms

    def send(self, kind: type, **fields):
        fields.setdefault("command_id", f"cmd-{next(self._ids)}")
        fields.setdefault("certificate_id", self.certificate_id)
        fields.setdefault("at_ms", self.now_ms)
        return self.apply(kind(**fields))

    def apply(self, command):
        entropy = entropy_at(DRAW_SECRET, self.state, command.certificate_id)
        outcome = handle(self.state, command, entropy)
        if isinstance(outcome, Accepted):
            self.state = outcome.state
            self.events.extend(outcome.events)
            self.settlements.extend(outcome.settlements)
            check_invariants(self.state, full=True)
        return outcome

    def must(self, kind: type, **fields) -> Accepted:
        outcome = self.send(kind, **fields)
        assert isinstance(outcome, Accepted), outcome
        return outcome

    def refused(self, kind: type, **fields) -> Rejected:
        before = msgspec.msgpack.encode(self.state)
        outcome = self.send(kind, **fields)
        assert isinstance(outcome, Rejected), outcome
        assert msgspec.msgpack.encode(self.state) == before, "a refusal changed the state"
        return outcome

    def setup(self, *, price_minor: int, budget_minor: int, attached_minor: int,
              seller: str = "seller", funder: str = "funder", currency: str = "USD",
              time_limit_s: int | None = None, **pool) -> None:
        # The seed's purchase pays at once: its examples run with no hold (the hold,
        # refunds and ends have their own tests, test_aftersale.py)
        pool.setdefault("hold_s", 0)
        offer_id, _, _ = self.certificate_id.rpartition("-")
        self.must(c.IssueCertificate, account_id=seller, offer_id=offer_id, serial=1,
                  copies=1, name="Espresso machine", price_minor=price_minor,
                  currency=currency, time_limit_s=time_limit_s,
                  funder_id=None if funder == seller else funder)
        self.must(c.AttachPool, account_id=funder, funding_ref="escrow-1",
                  budget_minor=budget_minor, attached_minor=attached_minor,
                  currency=currency, **pool)
        self.confirm_funding(budget_minor, currency)
        self.must(c.PostCertificate, account_id=seller)

    def confirm_funding(self, amount_minor: int, currency: str = "USD",
                        funding_ref: str = "escrow-1") -> Accepted:
        return self.must(c.ConfirmFunding, funding_ref=funding_ref, amount_minor=amount_minor,
                         currency=currency)

    def circulate(self, account: str, via: str | None = None) -> Accepted:
        return self.must(c.Circulate, account_id=account, via=via)

    def purchase(self, buyer: str = "buyer") -> Accepted:
        return self.must(c.Purchase, account_id=buyer, **self.paid())

    def paid(self, payment_ref: str = "pay-1", **overrides) -> dict:
        """What the payment system reports for a capture of the whole price."""
        assert self.state is not None
        return {"seller_id": self.state.seller_id, "payment_ref": payment_ref,
                "captured_minor": self.state.price_minor, "currency": self.state.currency,
                **overrides}

    @staticmethod
    def copy_of(state: CertificateState) -> CertificateState:
        return msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=CertificateState)

    # --- reading --------------------------------------------------------------------

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def payouts(self) -> dict[str, int]:
        return {s.payee_id: s.amount_minor for s in self.settlements
                if isinstance(s, CommissionPayout)}

    def releases(self) -> list[tuple[str, int, str]]:
        return [(s.payee_id, s.amount_minor, s.reason) for s in self.settlements
                if isinstance(s, BudgetRelease)]

    def seller_payments(self) -> list[tuple[str, int]]:
        return [(s.payee_id, s.amount_minor) for s in self.settlements
                if isinstance(s, SellerPayment)]


__all__ = ["CERT", "DAY_MS", "DRAW_SECRET", "OFFER", "Duplicate", "Scenario"]
