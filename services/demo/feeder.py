"""Demo traffic: offers of several copies, viral shares, purchases, and a little
bad input (forged and malformed commands) so every counter on the screen moves.

The feeder also plays the payment system for the demo, on its only topic,
``payment-results`` (signed with its Ed25519 key; the captures stage takes it into
``commands``): it confirms each pool's escrow hold (``ConfirmFunding``), and the
seller posts a few seconds later, once the confirmation is in, as a seller would; every
purchase is a payment it captured for the whole price (a buyer cannot say it paid);
now and then it refunds a purchase (within its hold or after it), as sellers do too.
Pools hold the money of a purchase for 20 s, so the demo shows held money being
released by the timer.
services/demo/__main__.py's payment system reports a result for each settlement."""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from dataclasses import dataclass, field

import msgspec

from domain import issue_offer
from domain.offer import offer_id_for
from schemas import commands as c
from services.common.auth import Key
from services.gateway import CommandSender
from services.paysim.sender import capture_command_id

_encode = msgspec.json.Encoder().encode


DEMO_HOLD_S = 20


@dataclass
class Live:
    certificate_id: str
    chain: list[str] = field(default_factory=list)
    buy_after: int = 0
    price_minor: int = 0
    currency: str = "EUR"
    refund_after_hold: bool = False


# how long a seller waits for the escrow confirmation before posting: 1 s was too
# short while `make run`'s services start (their first rounds, the broker's first
# transactions): ~1,600-2,000 posts came before their confirmation, were refused
# (funding_not_confirmed) and every share of those copies after them (not_posted)
POST_AFTER_S = 3.0
# copies on sale that the feeder shares
LIVE = 40
# how long the payment system's word waits after the commands before it: sent by its
# own client, it must not reach the engine before the shares and the pool it follows
PAY_AFTER_S = 0.25
# ... give or take this much: the word due within it goes in one signed batch
PAY_BATCH_S = 0.05
# The demo's users are honest: each shares about this often a minute, far below the
# fraud stage's velocity rule (8 distinct certificates a minute, services/fraud/rules.py
# Thresholds). With a fixed 300 of them, at DEMO_RATE=100 each shared ~16 times a
# minute and at 1,000 ~160: the fraud stage flagged nearly every share, a third of
# the commands at 1,000/s were its flags (and their refusals), and every commission
# was held for a review no one would do.
SHARES_PER_ACCOUNT_MINUTE = 1.0


def accounts_for(rate: float) -> int:
    """Enough accounts for ``rate`` commands a second (nearly all of them shares) to
    be SHARES_PER_ACCOUNT_MINUTE each; at least 300."""
    return max(300, int(rate * 60 / SHARES_PER_ACCOUNT_MINUTE))


class Feeder:
    def __init__(self, sender: CommandSender, seed: int = 1,
                 payer: CommandSender | None = None, rate: float = 0.0) -> None:
        """``payer``: the payment system's own client. Without one the feeder sends
        its word on ``sender`` right away, and the sender waits for what it sent
        before to be written whenever it changes topic (CommandSender.send_raw): at
        `make run`'s rates ~80 such waits a second held the feeder to ~390 commands/s.
        With one, its word is sent PAY_AFTER_S later, on its own connection.

        ``rate``: the commands a second asked for. A copy is bought after ~8 commands
        on average and waits POST_AFTER_S before its shares begin, so ``rate`` needs
        ~rate/8 new copies a second, rate * POST_AFTER_S / 8 of them waiting at any
        time: with a fixed 40 (live and waiting together) the feeder could not go
        past ~400 commands/s whatever the machine."""
        self.sender = sender
        self.payer = payer
        self.paying: deque[tuple[float, c.Command]] = deque()
        self.rng = random.Random(seed)
        self.live: list[Live] = []
        self.offers = 0
        self.ids = 0
        # the run's own mark in every id: `make run` keeps the broker's data from one
        # run to the next, and the engine refuses a funding or payment reference used
        # before (funding_ref_used, payment_ref_used), so "escrow-1" of a second run was
        # refused, its offer never posted, and its shares refused as not_posted
        self.run = f"{int(time.time() * 1000):x}"
        self.sent = 0
        self.accounts = [f"user-{i}" for i in range(accounts_for(rate))]
        self.forged = Key("dev-gw-1", "gateway", b"an-attacker-guessing-the-secret")
        # bought, with a refund to come: (when, order, copy), earliest first (a scan of
        # the list each step was a fifth of the feeder's CPU at 1,000/s)
        self.sold: list[tuple[float, int, Live]] = []
        # posts waiting for their escrow confirmation to go through the captures stage
        self.to_post: list[tuple[float, c.PostCertificate, Live]] = []
        self.waiting_max = max(LIVE, int(rate * POST_AFTER_S / 8))

    def _id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}-{self.run}-{self.ids}"

    def _send(self, command: c.Command) -> None:
        self.sender.send(command)
        self.sent += 1

    def _pay(self, command: c.Command) -> None:
        """What the payment system says, on its own topic."""
        if self.payer is None:
            self.sender.send(command, topic=self.sender.payment_results)
        else:
            self.paying.append((time.monotonic() + PAY_AFTER_S, command))
        self.sent += 1

    def _release_payments(self) -> None:
        """Sends what is due, and what falls due within PAY_BATCH_S, as one batch:
        signed once (Keyring.sign_batch), checked once by each verifier."""
        if not self.paying or self.paying[0][0] > time.monotonic():
            return
        until = time.monotonic() + PAY_BATCH_S
        due = []
        while self.paying and self.paying[0][0] <= until:
            due.append(self.paying.popleft()[1])
        assert self.payer is not None
        self.payer.send_batch(due, topic=self.payer.payment_results)

    def new_offer(self) -> None:
        self.offers += 1
        now = int(time.time() * 1000)
        seller, funder = f"seller-{self.offers % 7}", f"funder-{self.offers % 5}"
        offer = offer_id_for(seller, f"offer-{int(time.time())}-{self.offers}")
        copies = self.rng.randint(1, 4)
        for issue in issue_offer(offer_id=offer, command_id=self._id("issue"),
                                 seller_id=seller, funder_id=funder,
                                 name=f"Product {self.offers}",
                                 price_minor=self.rng.randrange(5_000, 200_000),
                                 currency=self.rng.choice(["EUR", "USD"]), copies=copies,
                                 at_ms=now, time_limit_s=self.rng.choice([None, 60, 180])):
            budget = self.rng.randrange(2_000, 20_000)
            escrow = self._id("escrow")
            self._send(issue)
            self._send(c.AttachPool(
                command_id=self._id("attach"), certificate_id=issue.certificate_id, at_ms=now,
                account_id=funder, funding_ref=escrow,
                budget_minor=budget, attached_minor=budget // 10, currency=issue.currency,
                acquisition=c.AcquisitionPolicy(
                    beneficiary=self.rng.choice(["circulator", "upstream"]),
                    amount=self.rng.choice([
                        c.AllAttached(), c.PercentOfAttached(basis_points=5_000),
                        c.RandomAmount(min_minor=1, max_minor=max(1, budget // 10))]),
                    max_depth=self.rng.choice([None, 3])),
                thresholds=c.Thresholds(max_circulations=self.rng.choice([20, 40, None]),
                                        max_cumulative_bp_of_price=3_000),
                hold_s=DEMO_HOLD_S))
            self._pay(c.ConfirmFunding(  # the payment system holds the budget in escrow
                command_id=self._id("escrow-held"), certificate_id=issue.certificate_id,
                at_ms=now, funding_ref=escrow, amount_minor=budget, currency=issue.currency))
            self.to_post.append((time.monotonic() + POST_AFTER_S, c.PostCertificate(
                command_id=self._id("post"), certificate_id=issue.certificate_id, at_ms=now,
                account_id=issue.account_id), Live(
                    issue.certificate_id, buy_after=self.rng.randint(3, 15),
                    price_minor=issue.price_minor, currency=issue.currency)))

    def step(self) -> None:
        """One user action: mostly a share, sometimes a purchase, a refund or a bad
        command."""
        self._release_payments()
        while self.to_post and self.to_post[0][0] <= time.monotonic():
            _, post, live = self.to_post.pop(0)
            self._send(msgspec.structs.replace(post, at_ms=int(time.time() * 1000)))
            self.live.append(live)
        if len(self.live) < LIVE and len(self.to_post) < self.waiting_max:
            self.new_offer()
            return
        now = int(time.time() * 1000)
        if self.sold and self.sold[0][0] <= time.monotonic():
            self.refund(heapq.heappop(self.sold)[2], now)
            return
        if not self.live:
            return
        cert = self.live[min(int(self.rng.expovariate(0.08)), len(self.live) - 1)]
        roll = self.rng.random()
        if roll < 0.01:
            body = _encode({"type": "circulate", "command_id": self._id("forged"),
                            "certificate_id": cert.certificate_id, "at_ms": now,
                            "account_id": "mallory"})
            self.sender.send_raw(cert.certificate_id.encode(), body,
                                 headers=self.sender.keyring.sign(body, self.forged))
            self.sent += 1
        elif roll < 0.02:
            self.sender.send_raw(cert.certificate_id.encode(), b'{"type": "circulate", ')
            self.sent += 1
        elif len(cert.chain) >= cert.buy_after:
            payment_ref = self._id("pay")  # the payment system captured the whole price
            self._pay(c.Purchase(command_id=capture_command_id(payment_ref),
                                 certificate_id=cert.certificate_id, at_ms=now,
                                 account_id=self.rng.choice(self.accounts),
                                 seller_id=cert.certificate_id.partition("~")[0],
                                 payment_ref=payment_ref, captured_minor=cert.price_minor,
                                 currency=cert.currency))
            self.live.remove(cert)
            if self.rng.random() < 0.25:  # a quarter are refunded: within the hold or after
                delay = self.rng.choice([5, DEMO_HOLD_S + 10])
                cert.refund_after_hold = delay > DEMO_HOLD_S
                heapq.heappush(self.sold, (time.monotonic() + delay, self.ids, cert))
        else:
            account = self.rng.choice(self.accounts)
            via = cert.chain[-1] if cert.chain and self.rng.random() < 0.8 else None
            self._send(c.Circulate(command_id=self._id("share"), certificate_id=cert.certificate_id,
                                   at_ms=now, account_id=account, via=via))
            if account != (cert.chain[-1] if cert.chain else None):
                cert.chain.append(account)

    def refund(self, cert: Live, now: int) -> None:
        """Half the price back, or all of it. Within the hold by the seller or the
        payment system; after it through the payment system only (a seller's own is
        refused refund_after_hold), half of them chargebacks, which claw commission
        back where a refund leaves it locked."""
        by = ("payment_system" if cert.refund_after_hold
              else self.rng.choice(["seller", "payment_system"]))
        chargeback = "4837" if cert.refund_after_hold and self.rng.random() < 0.5 else None
        seller = cert.certificate_id.partition("~")[0]
        amount = self.rng.choice([cert.price_minor, cert.price_minor // 2])
        refund = c.Refund(command_id=self._id("refund"), certificate_id=cert.certificate_id,
                          at_ms=now, by=by, account_id=seller if by == "seller" else None,
                          amount_minor=amount, refund_ref=self._id("rf"),
                          chargeback_reason=chargeback)
        if by == "payment_system":
            self._pay(refund)
        else:
            self._send(refund)
