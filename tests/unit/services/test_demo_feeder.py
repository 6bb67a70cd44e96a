"""make run's traffic: a second run on the broker data the first left (the run folder
persists) uses none of the first run's references, which the engine refuses as used."""

from __future__ import annotations

import time

import pytest

from schemas import commands as c
from services.demo import feeder as feeder_module
from services.demo.feeder import PAY_AFTER_S, POST_AFTER_S, Feeder
from services.fraud.rules import Thresholds

pytestmark = pytest.mark.unit


class Unsigned:
    def sign(self, body: bytes, key) -> list:
        return []


class Collecting:
    """The feeder's sender, below the adapter line: keeps what it is asked to send."""

    payment_results = "payment-results"
    keyring = Unsigned()

    def __init__(self) -> None:
        self.sent: list[c.Command] = []

    def send(self, command: c.Command, topic: str | None = None) -> None:
        self.sent.append(command)

    def send_batch(self, commands: list[c.Command], topic: str | None = None) -> None:
        self.sent.extend(commands)

    def send_raw(self, key: bytes, body: bytes, headers=None) -> None:
        pass


def references(feeder: Feeder, steps: int) -> set[str]:
    for _ in range(steps):
        feeder.step()
    sent = feeder.sender.sent
    refs = [ref for cmd in sent for ref in (getattr(cmd, "funding_ref", None),
                                             getattr(cmd, "payment_ref", None),
                                             getattr(cmd, "refund_ref", None)) if ref]
    ids = [cmd.command_id for cmd in sent]
    assert len(set(ids)) == len(ids)
    return set(refs) | set(ids)


def test_a_second_run_reuses_no_reference_of_the_first():
    first = references(Feeder(Collecting()), 500)
    time.sleep(0.002)
    second = references(Feeder(Collecting()), 500)
    assert any(ref.startswith("escrow-") for ref in first)  # it did fund pools
    assert not first & second


def test_the_payment_systems_word_goes_on_its_own_client_after_the_commands():
    """No wait for the broker on every change of topic (what held `make run` to ~390
    commands/s), and no confirmation of a pool before the pool's own commands."""
    sender, payer = Collecting(), Collecting()
    feeder = Feeder(sender, payer=payer)
    feeder.step()  # an offer: issue and attach on commands, its escrow held on payment-results
    assert any(isinstance(cmd, c.AttachPool) for cmd in sender.sent)
    assert not payer.sent and not any(isinstance(cmd, c.ConfirmFunding) for cmd in sender.sent)
    time.sleep(PAY_AFTER_S)
    feeder.step()
    assert [type(cmd) for cmd in payer.sent if isinstance(cmd, c.ConfirmFunding)]
    assert not any(isinstance(cmd, c.ConfirmFunding) for cmd in sender.sent)


def test_the_copies_waiting_to_be_posted_grow_with_the_rate_asked():
    """~rate/8 copies a second are bought; each waits POST_AFTER_S before its shares:
    at 1,000 commands/s a fixed 40 copies in play held the feeder to ~400/s."""
    slow, fast = Feeder(Collecting(), payer=Collecting()), Feeder(
        Collecting(), payer=Collecting(), rate=1000)
    for _ in range(400):  # within a moment: no copy is posted yet
        slow.step()
        fast.step()
    assert len(slow.to_post) < 40 + 4  # an offer has at most 4 copies
    assert len(fast.to_post) >= 1000 * POST_AFTER_S / 8


@pytest.mark.parametrize("rate", [100, 1000])
def test_the_demos_users_share_too_slowly_to_look_like_bots(monkeypatch, rate):
    """A minute of traffic at ``rate``: hardly any account shares on as many distinct
    certificates as the fraud stage's velocity rule flags (with a fixed 300 accounts
    every one of them did, at both rates, and the fraud stage flagged nearly every
    share). Shares bound acquisitions from above, so this bounds the rule's flags."""
    monkeypatch.setattr(feeder_module, "POST_AFTER_S", 0.0)  # copies live at once
    feeder = Feeder(Collecting(), rate=rate)
    for _ in range(int(rate * 60)):
        feeder.step()
    certificates: dict[str, set[str]] = {}
    for cmd in feeder.sender.sent:
        if isinstance(cmd, c.Circulate):
            certificates.setdefault(cmd.account_id, set()).add(cmd.certificate_id)
    assert sum(map(len, certificates.values())) > rate * 60 * 0.8  # it did share
    limit = Thresholds().velocity_per_minute
    like_bots = [a for a, certs in certificates.items() if len(certs) >= limit]
    assert len(like_bots) <= len(certificates) / 1000, (len(like_bots), len(certificates))
