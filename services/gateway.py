"""The producing side of the gateway: signs commands and puts them on `commands`.

Used by the demo feeder, the load generator and the tests. The HTTP gateway where
users log in (issue 5) will use the same class. kafka-python, synchronous: one
producer per process, idempotent, acks from all in-sync replicas.
"""

from __future__ import annotations

import msgspec
from kafka import KafkaProducer

from schemas.commands import Command
from services.common.auth import Key, Keyring
from services.common.settings import Settings

_encode = msgspec.json.Encoder().encode


class CommandSender:
    def __init__(self, settings: Settings, keyring: Keyring, key: Key | None = None) -> None:
        self.topic = settings.topics.commands
        self.keyring = keyring
        self.fixed_key = key  # sign everything with this one (tests of forged input)
        self.key = key or keyring.first("gateway")
        self.producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all",
                                      enable_idempotence=True, linger_ms=5,
                                      client_id="commission-gateway",
                                      **settings.kafka_auth.kafka_python())

    def key_for(self, command: Command) -> Key:
        """The key whose scope may sign ``command`` (a payments key for what the payment
        system says: the demo and the tests play the payment system too)."""
        return self.fixed_key or self.keyring.key_for(command)

    def send(self, command: Command, topic: str | None = None) -> None:
        """Sign ``command`` with the key its scope needs and send it to ``commands``
        (or ``topic``: the payment system's results go to ``payment-results``)."""
        body = _encode(command)
        self.send_raw(command.certificate_id.encode(), body,
                      headers=self.keyring.sign(body, self.key_for(command)), topic=topic)

    def send_raw(self, key: bytes | None, body: bytes, *, sign: bool = True,
                 headers: list[tuple[str, bytes]] | None = None,
                 timestamp_ms: int | None = None, topic: str | None = None) -> None:
        """Send bytes as they are (tests use this for forged and malformed input, and
        ``timestamp_ms`` for a record timestamp set by the producer)."""
        if headers is None:
            headers = self.keyring.sign(body, self.key) if sign else []
        self.producer.send(topic or self.topic, key=key, value=body, headers=headers,
                           timestamp_ms=timestamp_ms)

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()
