"""Topic names and their contracts, in one place for services, tests and docs.

Every topic is keyed by certificate id and has the same partition count, so one
certificate's messages stay in one partition of every topic and are processed in
order at every stage. One is keyed by account instead: ``settlements``, cash-out's
settlements on their way to the netting stage, which recovers an account's
clawbacks from its payouts on any certificate (domain/netting.py), so one account's
settlements are applied in order there.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.commands import (
    AcceptedCommand,
    Command,
    ConfirmFunding,
    Purchase,
    Refund,
    ReportPayment,
)
from schemas.events import (
    AcquisitionClaimable,
    CertificateCirculated,
    CertificateEnded,
    CertificateIssued,
    CertificatePosted,
    CertificatePurchased,
    CommissionAcquired,
    CommissionApproved,
    CommissionDeclined,
    CommissionFlagged,
    Event,
    FundingConfirmed,
    HoldReleased,
    PaymentReported,
    PoolAttached,
    PoolReplenished,
    PoolWithdrawn,
    PurchaseRefunded,
    WithdrawalWarned,
)
from schemas.payments import Settlement
from schemas.rejections import Rejection

DEFAULT_PARTITIONS = 4


@dataclass(frozen=True)
class TopicSpec:
    name: str
    union: object
    schema: str  # file stem under schemas/json/
    producer: str
    description: str
    # the members of the union this topic carries (None: all of them)
    members: tuple[type, ...] | None = None

    def message_types(self) -> tuple[type, ...]:
        return self.members or getattr(self.union, "__args__", (self.union,))


# The published contracts: JSON, keyed by certificate id (settlements: by account).
# Not listed, on purpose: the stages' changelogs and ``fraud-feed``. Both are
# internal state of a pair of the engine's own stages, never read by anyone else:
# msgpack, positional (array_like structs), keyed by a row of the reader's rules
# (fraud-feed: ``a:{account}``, ``b0:``/``b1:{creation hour}``), and their layout
# changes with those rules (services/fraud/rules.py ``Seen``; services/common/rows.py).
# A JSON Schema of them would invite a consumer to depend on a layout that is not a
# contract. Topics.all() creates them; deploy/acls.py grants them (allocation writes
# fraud-feed, only the fraud stage reads it).
TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("commands", Command, "commands", "gateway; withdrawal timer (check_expiry, "
              "release_hold); captures (what the payment system said)",
              "Signed commands (headers `key-id` and `signature`: HMAC-SHA256 from the "
              "gateway and the timer, Ed25519 from the payment system)."),
    TopicSpec("accepted", AcceptedCommand, "accepted", "circulation",
              "Internal: every accepted command with its per-certificate sequence number, "
              "applied in order by allocation, withdrawal and cash-out."),
    TopicSpec("certificate-events", Event, "events", "circulation",
              "Accepted commands as facts: issued, attached, posted, circulated, purchased, "
              "hold released, refunded, ended (cancelled or closed), commissions declined, "
              "flagged and approved in review.",
              (CertificateIssued, PoolAttached, FundingConfirmed, CertificatePosted,
               CertificateCirculated, CertificatePurchased, HoldReleased, PurchaseRefunded,
               CertificateEnded, PaymentReported, CommissionDeclined, CommissionFlagged,
               CommissionApproved)),
    TopicSpec("allocations", Event, "events", "allocation",
              "Acquisitions, claimable shares and replenishments of each pool.",
              (CommissionAcquired, AcquisitionClaimable, PoolReplenished)),
    TopicSpec("withdrawals", Event, "events", "withdrawal", "Warnings and withdrawals of pools.",
              (WithdrawalWarned, PoolWithdrawn)),
    TopicSpec("settlements", Settlement, "payments", "cash-out",
              "Internal, keyed by the payee's account id: every settlement as the "
              "certificate made it (gross), applied in order per account by netting."),
    TopicSpec("payments", Settlement, "payments", "netting",
              "Settlement instructions for payment systems, keyed by certificate id; "
              "payouts net of the payee's outstanding clawbacks (gross_minor, "
              "offset_minor); dedupe on settlement_id."),
    TopicSpec("rejections", Rejection, "rejections", "circulation",
              "Every refused command with a reason code and the original bytes."),
    TopicSpec("payment-results", Command, "commands", "payment system",
              "Everything the payment system says, signed with its Ed25519 key (one record "
              "at a time, or a batch at once: header `batch-proof`, docs/payments.md): escrow "
              "confirmations (confirm_funding), captured purchases (purchase, keyed by "
              "`{seller_id}/{payment_ref}`), its refunds, and each settlement attempt's "
              "result (report_payment). The captures stage admits each payment reference "
              "once per seller and forwards them to `commands`, where they are decided in "
              "order with everything else.",
              (ConfirmFunding, Purchase, Refund, ReportPayment)),
)


@dataclass(frozen=True)
class Topics:
    """Topic names; a prefix isolates test runs and tenants on one cluster."""

    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def commands(self) -> str:
        return self.name("commands")

    @property
    def accepted(self) -> str:
        return self.name("accepted")

    @property
    def certificate_events(self) -> str:
        return self.name("certificate-events")

    @property
    def allocations(self) -> str:
        return self.name("allocations")

    @property
    def withdrawals(self) -> str:
        return self.name("withdrawals")

    @property
    def settlements(self) -> str:
        return self.name("settlements")

    @property
    def payments(self) -> str:
        return self.name("payments")

    @property
    def rejections(self) -> str:
        return self.name("rejections")

    @property
    def payment_results(self) -> str:
        return self.name("payment-results")

    @property
    def fraud_feed(self) -> str:
        # internal, like a changelog: the allocation stage's acquisitions for the fraud
        # stage, keyed by account and by account creation hour (services/fraud/rules.py)
        return self.name("fraud-feed")

    def all(self) -> list[str]:
        return [self.commands, self.accepted, self.certificate_events, self.allocations,
                self.withdrawals, self.settlements, self.payments, self.rejections,
                self.payment_results, self.fraud_feed]
