"""The payment system's side of the contract: what it says, signed with its own key.

The engine holds only the payment system's public key (services/common/auth.py);
this module is where its private key is used: by the demo's simulated payment
system (services/paysim), and by tests and the demo feeder, which play the payment
system. Everything it says goes to ``payment-results``, the only topic the payment
system may write (deploy/acls.py): a captured purchase keyed by
``{seller_id}/{payment_ref}`` (the captures stage admits each reference once per
seller), an escrow confirmation by ``/escrow/{funding_ref}`` (one hold backs one
pool), the rest keyed by certificate id.

Keys: ``PAYMENT_SYSTEM_KEYS`` or ``PAYMENT_SYSTEM_KEYS_FILE``
(``id:payments:ed25519-private:<base64 seed>``); the development pair otherwise
(refused when COMMISSION_ENV=production).
"""

from __future__ import annotations

import time

import msgspec
from kafka import KafkaProducer

from schemas.commands import Command, ConfirmFunding, Purchase, capture_key, escrow_key
from services.common.auth import DEV_PAYMENTS_PRIVATE, Keyring, signer_scope
from services.common.settings import Settings

_encode = msgspec.json.Encoder().encode


def _now_ms() -> int:
    return int(time.time() * 1000)


def payment_system_keyring() -> Keyring:
    return Keyring.from_env("PAYMENT_SYSTEM_KEYS", DEV_PAYMENTS_PRIVATE)


def capture_command_id(payment_ref: str) -> str:
    """One captured payment, one command: a resent capture is a duplicate."""
    return f"capture:{payment_ref}"


def route(command: Command) -> tuple[bytes, bool]:
    """(Kafka key, whether it is the payment system's) for ``command``."""
    if isinstance(command, Purchase):
        return capture_key(command.seller_id, command.payment_ref), True
    if isinstance(command, ConfirmFunding):
        return escrow_key(command.funding_ref), True
    return command.certificate_id.encode(), signer_scope(command) == "payments"


class PaymentSystem:
    """Signs and sends what the payment system reports. kafka-python, synchronous."""

    def __init__(self, settings: Settings, keyring: Keyring | None = None) -> None:
        self.topic = settings.topics.payment_results
        self.keyring = keyring or payment_system_keyring()
        self.key = self.keyring.signing_key("payments")
        self.producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all",
                                      enable_idempotence=True, linger_ms=5,
                                      reconnect_backoff_max_ms=1_000,  # as the gateway
                                      client_id="commission-payment-system",
                                      **settings.kafka_auth.kafka_python())
        self.pending: list = []  # sends not yet known to be acknowledged

    def send(self, command: Command) -> None:
        key, ours = route(command)
        if not ours:
            raise ValueError(f"{type(command).__name__} is not the payment system's to say")
        body = _encode(command)
        self.pending.append(self.producer.send(self.topic, key=key, value=body,
                                               headers=self.keyring.sign(body, self.key)))

    def capture(self, *, certificate_id: str, seller_id: str, buyer_id: str, payment_ref: str,
                captured_minor: int, currency: str, at_ms: int | None = None) -> str:
        """Report a captured payment; returns its command id (to follow its outcome)."""
        command = Purchase(command_id=capture_command_id(payment_ref),
                           certificate_id=certificate_id, at_ms=at_ms or _now_ms(), account_id=buyer_id,
                           seller_id=seller_id, payment_ref=payment_ref,
                           captured_minor=captured_minor, currency=currency)
        self.send(command)
        self.flush()
        return command.command_id

    def confirm_funding(self, *, certificate_id: str, funding_ref: str, amount_minor: int,
                        currency: str, at_ms: int | None = None) -> str:
        """Confirm the escrow hold behind a pool; returns the command id."""
        command = ConfirmFunding(command_id=f"escrow:{funding_ref}", certificate_id=certificate_id,
                                 at_ms=at_ms or _now_ms(), funding_ref=funding_ref, amount_minor=amount_minor,
                                 currency=currency)
        self.send(command)
        self.flush()
        return command.command_id

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every send is acknowledged; raise if one failed (kafka-python's
        own flush does not): a capture the caller reports as done is on the topic."""
        self.producer.flush(timeout_s)
        pending, self.pending = self.pending, []
        for future in pending:
            future.get(timeout=timeout_s)

    def close(self) -> None:
        self.producer.close()
