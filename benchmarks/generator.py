"""Share-traffic generator: signed commands with the shape of real share traffic.

    python -m benchmarks.generator --commands 20000 --rate 2000 [--hot] [--seed 1]

* viral cascades: a branching process; each share spawns Poisson(R) further shares
  (``--reproduction``) from the sharer's feed (``via``), down to ``--depth`` levels;
* Zipf popularity across certificates (``--zipf``), or ``--hot``: one certificate
  gets ``--hot-share`` of all shares;
* purchases at ``--purchase-rate`` per share; a certificate is bought once, and a
  bought certificate (or one whose pool reached its circulation limit) is replaced
  by a newly issued one, so the traffic's mix stays the same over a long run;
* bad input: ``--bad-rate`` malformed bodies, ``--duplicate-rate`` resent commands,
  ``--forged-rate`` commands signed with a wrong secret.

Same seed, same traffic: the command sequence (ids, accounts, amounts) depends only
on the arguments. ``at_ms`` is stamped when a command is sent (the services refuse
commands stamped far from the broker's clock).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
from confluent_kafka import Producer

from domain.offer import certificate_id_for, offer_owner
from schemas import commands as c
from services.common.auth import Key, Keyring
from services.common.settings import Settings
from services.common.topics import PRODUCER_BATCH_BYTES
from services.paysim.sender import payment_system_keyring

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class TrafficSpec:
    certificates: int = 200
    commands: int = 20_000
    reproduction: float = 1.5
    depth: int = 12
    zipf: float = 1.1
    hot: bool = False
    hot_share: float = 0.9
    purchase_rate: float = 0.002
    bad_rate: float = 0.0
    duplicate_rate: float = 0.0
    forged_rate: float = 0.0
    seed: int = 1
    prefix: str = "gen"


@dataclass(frozen=True)
class Item:
    """One message to send: a command, or raw bytes for bad input."""

    command: c.Command | None = None
    raw: bytes | None = None
    key: bytes | None = None
    forged: bool = False


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth; lam is small (a reproduction number)
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


CIRCULATION_LIMIT = 5_000  # the generated pools withdraw after this many circulations


SETUP_COMMANDS = 4  # issue, attach, the payment system's confirmation, post


def _issue(rng: random.Random, spec: TrafficSpec, cid: str) -> list[Item]:
    """Issue (naming a funder), attach a pool, confirm its escrow (the payment
    system), post (by the seller who issued)."""
    budget = rng.randrange(10_000, 1_000_000)
    offer_id = cid.rpartition("-")[0]
    seller = offer_owner(offer_id)
    funder = f"funder-{rng.randrange(20)}"
    assert seller is not None
    return [
        Item(c.IssueCertificate(command_id=f"{cid}-i", certificate_id=cid, at_ms=0,
                                account_id=seller, offer_id=offer_id,
                                serial=1, copies=1, name="Generated product",
                                price_minor=rng.randrange(1_000, 1_000_000), currency="EUR",
                                funder_id=funder)),
        Item(c.AttachPool(
            command_id=f"{cid}-a", certificate_id=cid, at_ms=0,
            account_id=funder, funding_ref=f"esc-{cid}",
            budget_minor=budget, attached_minor=max(1, budget // 20), currency="EUR",
            acquisition=c.AcquisitionPolicy(
                amount=c.RandomAmount(min_minor=1, max_minor=max(2, budget // 40))),
            thresholds=c.Thresholds(max_circulations=None if spec.hot else CIRCULATION_LIMIT))),
        Item(c.ConfirmFunding(command_id=f"{cid}-e", certificate_id=cid, at_ms=0,
                              funding_ref=f"esc-{cid}", amount_minor=budget, currency="EUR")),
        Item(c.PostCertificate(command_id=f"{cid}-p", certificate_id=cid, at_ms=0,
                               account_id=seller)),
    ]


def traffic(spec: TrafficSpec) -> Iterator[Item]:
    """The traffic is stationary: ``certificates`` are on offer at any time; one that
    is bought or reaches its pool's circulation limit leaves the catalogue and a new
    one is issued in its popularity slot. (Without that, a long run ends with most
    shares aimed at bought or withdrawn certificates: cheap refusals, which would
    flatter the latency measured late in a run.)"""
    rng = random.Random(spec.seed)
    issued = 0

    def new_certificate() -> str:
        nonlocal issued
        issued += 1
        seller = f"seller-{(issued - 1) % 50}"
        return certificate_id_for(f"{seller}~{spec.prefix}-{spec.seed}-{issued - 1}", 1)

    slots: list[str] = []
    for _ in range(spec.certificates):
        slots.append(new_certificate())
        yield from _issue(rng, spec, slots[-1])
    slot_of = {cid: i for i, cid in enumerate(slots)}
    weights = [1.0 / (i + 1) ** spec.zipf for i in range(len(slots))]
    sent = SETUP_COMMANDS * len(slots)
    account = 0
    shares: dict[str, int] = {}
    # active cascades: (certificate, via account, depth), breadth first, interleaved
    frontier: deque[tuple[str, str | None, int]] = deque()
    recent: deque[Item] = deque(maxlen=500)
    n = 0

    def retire(cid: str) -> list[Item]:
        """The certificate leaves the catalogue (and slot_of); a new one takes its slot."""
        slot = slot_of.pop(cid)
        slots[slot] = new_certificate()
        slot_of[slots[slot]] = slot
        return _issue(rng, spec, slots[slot])

    while sent < spec.commands:
        while frontier and frontier[0][0] not in slot_of:
            frontier.popleft()  # a retired certificate's cascade ends
        if not frontier or rng.random() < 0.05:
            if spec.hot and rng.random() < spec.hot_share:
                cid = slots[0]
            else:
                cid = rng.choices(slots, weights)[0]
            frontier.append((cid, None, 0))
        cid, via, depth = frontier.popleft()
        n += 1
        roll = rng.random()
        if roll < spec.bad_rate:
            yield Item(raw=b'{"type":"circulate","command_id":', key=cid.encode())
        elif roll < spec.bad_rate + spec.duplicate_rate and recent:
            yield rng.choice(recent)
        elif roll < spec.bad_rate + spec.duplicate_rate + spec.forged_rate:
            yield Item(c.Circulate(command_id=f"{cid}-f{n}", certificate_id=cid, at_ms=0,
                                   account_id="mallory"), forged=True)
        elif rng.random() < spec.purchase_rate:
            yield Item(c.Purchase(command_id=f"{cid}-buy", certificate_id=cid, at_ms=0,
                                  account_id=f"buyer-{rng.randrange(10_000)}",
                                  seller_id=offer_owner(cid.rpartition("-")[0]) or "",
                                  payment_ref=f"pay-{cid}",
                                  # at least any price _issue draws (the whole price
                                  # is what the payment system captured)
                                  captured_minor=1_000_000, currency="EUR"))
            setup = retire(cid)
            yield from setup
            sent += len(setup)
        else:
            account += 1
            who = f"acct-{spec.seed}-{account}"
            item = Item(c.Circulate(command_id=f"{cid}-s{n}", certificate_id=cid, at_ms=0,
                                    account_id=who, via=via))
            recent.append(item)
            yield item
            shares[cid] = shares.get(cid, 0) + 1
            if not spec.hot and shares[cid] >= CIRCULATION_LIMIT:
                setup = retire(cid)
                yield from setup
                sent += len(setup)
            elif depth < spec.depth:
                frontier.extend((cid, who, depth + 1) for _ in range(_poisson(rng, spec.reproduction)))
        sent += 1


def generate(spec: TrafficSpec) -> list[Item]:
    return list(traffic(spec))


Prepared = tuple[bytes | None, bytes, list, str | None]  # key, body, headers, command id


# a paced sender wakes at most every PACE_STEP_S and sends what fell due meanwhile: one
# sleep a command (~4,000 a second at half the pipeline's rate) cost the instrument a
# tenth of a core on the machine it shares with what it measures
PACE_STEP_S = 0.002


class Sender:
    """Stamps, encodes and signs items up front, then sends them, paced to ``rate``
    per second (0: as fast as the producer goes).

    The instrument shares the machine with what it measures, so it sends with
    librdkafka (a C producer: ~2 us a command) rather than the gateway's kafka-python
    client (~60 us a command in Python, a third of a core at 5,000 commands/s). The
    records are what the gateway sends: the same key (the Java client's murmur2
    partitioner), body and signature headers."""

    def __init__(self, settings: Settings, keyring: Keyring) -> None:
        self.topic = settings.topics.commands
        # it plays the payment system too (escrow confirmations, captures), straight
        # onto commands: the benchmark measures the pipeline behind the captures stage
        self.keyring = keyring.with_keys(payment_system_keyring())
        self.producer = Producer({
            "bootstrap.servers": settings.bootstrap, "enable.idempotence": True,
            "acks": "all", "linger.ms": 5, "partitioner": "murmur2_random",
            "batch.size": PRODUCER_BATCH_BYTES,
            "queue.buffering.max.messages": 2_000_000, "client.id": "commission-generator",
            **settings.kafka_auth.librdkafka()})
        self.forger = Key(keyring.first("gateway").key_id, "gateway", b"forged-forged-forged-x")
        self.sent_ms: dict[str, int] = {}

    def prepare(self, items: list[Item], start_ms: int, rate: float = 0.0) -> list[Prepared]:
        out: list[Prepared] = []
        for i, item in enumerate(items):
            if item.command is None:
                out.append((item.key, item.raw, [], None))
                continue
            at_ms = start_ms + (int(i * 1000 / rate) if rate else 0)
            command = msgspec.structs.replace(item.command, at_ms=at_ms)
            body = _encode(command)
            key = self.forger if item.forged else self.keyring.key_for(command)
            out.append((command.certificate_id.encode(), body, self.keyring.sign(body, key),
                        command.command_id))
        return out

    def prepare_now(self, items: list[Item], rate: float = 0.0) -> list[Prepared]:
        """Prepared to be sent from now on (paced: from a moment from now, the time it
        takes to sign them)."""
        lead_ms = 200 if rate else 0
        return self.prepare(items, int(time.time() * 1000) + lead_ms, rate)

    def send(self, items: list[Item], rate: float = 0.0, progress: bool = False) -> float:
        return self.send_prepared(self.prepare_now(items, rate), rate, progress)

    def send_prepared(self, prepared: list[Prepared], rate: float = 0.0,
                      progress: bool = False) -> float:
        started = time.monotonic()
        produce = self.producer.produce
        poll = self.producer.poll
        topic = self.topic
        sent_ms = self.sent_ms
        for i, (key, body, headers, command_id) in enumerate(prepared):
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:  # ahead: sleep a step, then send all that fell due
                    time.sleep(delay + PACE_STEP_S)
            produce(topic, body, key, headers=headers or None, on_delivery=_failed)
            if command_id is not None and command_id not in sent_ms:
                sent_ms[command_id] = int(time.time() * 1000)
            if i % 1000 == 0:
                poll(0)  # serve delivery reports
                if progress:
                    bar = "#" * int(30 * i / len(prepared))
                    sys.stderr.write(f"\r[{bar:<30}] {i}/{len(prepared)}")
        self.flush()
        if progress:
            sys.stderr.write(f"\r[{'#' * 30}] {len(prepared)}/{len(prepared)}\n")
        return time.monotonic() - started

    def flush(self) -> None:
        left = self.producer.flush(60)
        if left:
            raise RuntimeError(f"{left} commands not delivered within 60 s")

    def close(self) -> None:
        self.flush()
        self.producer = None  # librdkafka's client ends with its last reference


def _failed(error, message) -> None:
    if error is not None:
        raise RuntimeError(f"a command was not delivered: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generator")
    defaults = TrafficSpec()
    for name, value in defaults.__dict__.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--rate", type=float, default=0.0, help="commands/s (0: flat out)")
    args = vars(parser.parse_args(argv))
    rate = args.pop("rate")
    spec = TrafficSpec(**args)
    items = generate(spec)
    settings = Settings.from_env()
    keyring = Keyring.from_env()
    sender = Sender(settings, keyring)
    seconds = sender.send(items, rate=rate, progress=True)
    sender.close()
    print(f"sent {len(items)} commands in {seconds:.1f}s ({len(items) / seconds:,.0f}/s) "
          f"to {settings.topics.commands} at {settings.bootstrap}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
