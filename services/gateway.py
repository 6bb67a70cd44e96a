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
from services.paysim.sender import payment_system_keyring, route

_encode = msgspec.json.Encoder().encode
# records signed together at most: each carries a path of log2 of this many hashes
BATCH_MAX = 64


class CommandSender:
    def __init__(self, settings: Settings, keyring: Keyring, key: Key | None = None,
                 payer: Keyring | None = None) -> None:
        self.topic = settings.topics.commands
        self.payment_results = settings.topics.payment_results
        self.keyring = keyring
        self.fixed_key = key  # sign everything with this one (tests of forged input)
        self.key = key or keyring.first("gateway")
        # the payment system's own keys (its private key), for the demo and the tests
        # that play the payment system, loaded when first needed; the API never has them
        self._payer = payer
        self._last_topic: str | None = None
        self.producer = self._connect(settings)

    def _connect(self, settings: Settings):
        """The Kafka producer (services/demo/clients.py puts another client here)."""
        # a broker that went away is tried again at least every second (kafka-python's
        # backoff grows to 30 s: the API could refuse writes long after it was back)
        return KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all",
                             enable_idempotence=True, linger_ms=5,
                             reconnect_backoff_max_ms=1_000,
                             client_id="commission-gateway",
                             **settings.kafka_auth.kafka_python())

    def _produce(self, topic: str, key: bytes | None, body: bytes,
                 headers: list[tuple[str, bytes]], timestamp_ms: int | None) -> None:
        self.producer.send(topic, key=key, value=body, headers=headers, timestamp_ms=timestamp_ms)

    def key_for(self, command: Command) -> Key:
        """The key whose scope may sign ``command`` (a payments key for what the payment
        system says: the demo and the tests play the payment system too)."""
        if self.fixed_key is not None:
            return self.fixed_key
        if not route(command)[1]:
            return self.keyring.key_for(command)
        if self._payer is None:
            self._payer = payment_system_keyring()
        return self._payer.signing_key("payments")

    def send(self, command: Command, topic: str | None = None) -> None:
        """Sign ``command`` with the key its scope needs and send it to ``commands``,
        or to ``topic``: on ``payment-results`` what the payment system says goes
        through the captures stage (a capture keyed by seller and payment reference,
        services.paysim.sender.route). The tests and the demo feeder, which play
        every party, put the payment system's word straight on ``commands`` too; in
        a deployment its ACLs allow it only ``payment-results`` (deploy/acls.py)."""
        key, body = self._record(command, topic)
        self.send_raw(key, body, headers=Keyring.sign(body, self.key_for(command)), topic=topic)

    def send_batch(self, commands: list[Command], topic: str | None = None) -> None:
        """Send ``commands`` in order, as ``send`` does, signed together where they
        share a key (Keyring.sign_batch): one Ed25519 signature for a batch of the
        payment system's word instead of one each, and one check in each verifier."""
        records = [(*self._record(command, topic), self.key_for(command)) for command in commands]
        by_key: dict[str, list[int]] = {}
        for i, (_, _, key) in enumerate(records):
            by_key.setdefault(key.key_id, []).append(i)
        headers: list[list[tuple[str, bytes]]] = [[] for _ in records]
        for members in by_key.values():
            for start in range(0, len(members), BATCH_MAX):
                chunk = members[start:start + BATCH_MAX]
                signed = Keyring.sign_batch([records[i][1] for i in chunk], records[chunk[0]][2])
                for i, h in zip(chunk, signed, strict=True):
                    headers[i] = h
        for (key, body, _), h in zip(records, headers, strict=True):
            self.send_raw(key, body, headers=h, topic=topic)

    def _record(self, command: Command, topic: str | None) -> tuple[bytes, bytes]:
        """(Kafka key, body) of ``command`` on ``topic``."""
        body = _encode(command)
        key = command.certificate_id.encode()
        if topic is not None and topic != self.topic:
            key = route(command)[0]
        return key, body

    def send_raw(self, key: bytes | None, body: bytes, *, sign: bool = True,
                 headers: list[tuple[str, bytes]] | None = None,
                 timestamp_ms: int | None = None, topic: str | None = None) -> None:
        """Send bytes as they are (tests use this for forged and malformed input, and
        ``timestamp_ms`` for a record timestamp set by the producer)."""
        if headers is None:
            headers = self.keyring.sign(body, self.key) if sign else []
        topic = topic or self.topic
        if topic != self._last_topic:
            # what was sent before reaches its topic first: a capture sent after a
            # circulation cannot overtake it through the captures stage
            self.flush()
            self._last_topic = topic
        self._produce(topic, key, body, headers, timestamp_ms)

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()
