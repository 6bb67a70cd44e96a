"""The netting service: payouts net of the payee's outstanding clawbacks.

Consumes ``settlements`` (cash-out's, keyed by the payee's account id, so all of one
account's settlements are applied here in order) and keeps one ledger per account
(domain/netting.py): its outstanding clawbacks per currency, and the offset each
payout took. Publishes every settlement to ``payments``, keyed by its certificate id
as payment systems read it: payouts with ``gross_minor``, ``offset_minor`` and the
``amount_minor`` to pay; everything else as cash-out made it. It is the only writer
of ``payments``.

A ledger is checked after every settlement (clawed back = outstanding + recovered);
a violation parks the partition like any poison record.
"""

from __future__ import annotations

import msgspec
from confluent_kafka import Message

from domain.netting import AccountLedger, net
from schemas.payments import Settlement
from services.common.auth import Keyring
from services.common.metrics import Metrics
from services.common.rows import WholeRowStore
from services.common.settings import Settings
from services.common.stage import Applied, Output

_decode = msgspec.json.Decoder(Settlement).decode
_encode = msgspec.json.Encoder().encode


class NettingStage:
    name = "netting"

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.topics = settings.topics
        self.metrics = metrics
        self.output = settings.topics.payments

    def input_topic(self) -> str:
        return self.topics.settlements

    def output_topics(self) -> list[str]:
        return [self.output]

    @staticmethod
    def row_store() -> WholeRowStore:
        return WholeRowStore(AccountLedger)

    def apply(self, ledger: AccountLedger | None, record: Message) -> Applied:
        settlement = _decode(record.value())
        self.metrics.count_in(type(settlement).__name__)
        after, out = net(ledger, settlement)  # a NettingViolation parks the partition
        self.metrics.count_out(self.output, [out])
        offset = getattr(out, "offset_minor", 0)
        if offset and out.attempt == 1:
            self.metrics.count_flow("clawback_recovered", out.currency, offset)
        outputs = [Output(self.output, _encode(out), key=out.certificate_id.encode())]
        if ledger is None and after == AccountLedger(account_id=after.account_id):
            return Applied(None, False, outputs)  # no row for an account never clawed back
        return Applied(after, after is not ledger, outputs)  # net returns a new one if changed


def build(settings: Settings, keyring: Keyring, metrics: Metrics) -> NettingStage:
    return NettingStage(settings, metrics)
