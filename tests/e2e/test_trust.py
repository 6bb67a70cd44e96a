"""The engine's trust boundaries on the real pipeline (issue #22): a purchase is the
payment system's word, a payment or refund reference counts once, and no single
record, however large or deep, stops the pipeline."""

from __future__ import annotations

import hashlib
import time

import msgspec
import pytest
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from schemas import commands as c
from schemas.payments import Settlement
from schemas.rejections import Rejection
from services.common.topics import INPUT_MAX_MESSAGE_BYTES
from services.paysim.sender import PaymentSystem
from tests.e2e.certificates import cert_id, setup

decode_rejection = msgspec.json.Decoder(Rejection).decode
decode_settlement = msgspec.json.Decoder(Settlement).decode
encode = msgspec.json.Encoder().encode

PRICE = 10_000


def _rejections(pipeline, want: set[str], timeout_s: float = 90.0) -> dict[str, Rejection]:
    """The rejections of ``want`` (command ids, or ``original_sha256`` for records
    without one), once all are there."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {}
        for raw in pipeline.read(pipeline.topics.rejections):
            r = decode_rejection(raw)
            found[r.command_id or r.original_sha256] = r
        if want <= set(found) or time.monotonic() > deadline:
            missing = want - set(found)
            assert not missing, f"no rejection for {missing}; logs in {pipeline.logs}"
            return found
        pipeline.assert_running()
        time.sleep(0.5)


def _settlements(pipeline, cert: str) -> list[Settlement]:
    return [s for s in map(decode_settlement, pipeline.read(pipeline.topics.payments))
            if s.certificate_id == cert]


def test_only_a_captured_payment_buys_and_each_reference_counts_once(pipeline):
    pipeline.start_all()
    t = int(time.time() * 1000)
    unpaid, sold, other = cert_id("unpaid"), cert_id("sold"), cert_id("other")
    shares = lambda cert: [  # noqa: E731
        c.Circulate(command_id=f"{cert}-s1", certificate_id=cert, at_ms=t, account_id="ann"),
        c.Circulate(command_id=f"{cert}-s2", certificate_id=cert, at_ms=t, account_id="ben",
                    via="ann")]
    pool = {"price_minor": PRICE, "budget_minor": 1_000, "attached_minor": 100, "hold_s": 0,
            "acquisition": c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100))}
    pipeline.send(*setup(unpaid, t, **pool), *shares(unpaid), *setup(sold, t, **pool),
                  *shares(sold), *setup(other, t, **pool))
    # A logged-in buyer says it bought (signed by the gateway, any payment_ref): the
    # attack of issue #22. With no hold, the sharers would be paid at once.
    buyer_says = c.Purchase(command_id="unpaid-buy", certificate_id=unpaid, at_ms=t,
                            account_id="mallory", seller_id="seller",
                            payment_ref="never-paid-anything", captured_minor=PRICE,
                            currency="EUR")
    body = encode(buyer_says)
    pipeline.sender.send_raw(unpaid.encode(), body, headers=pipeline.keyring.sign(
        body, pipeline.keyring.first("gateway")))
    pipeline.sender.flush()

    # a funder attaches pools to two certificates under one escrow reference; the
    # payment system confirms that hold for each (one hold would back two budgets)
    first, second = cert_id("escrow-a"), cert_id("escrow-b")
    for cert in (first, second):
        issue, attach = setup(cert, t, **pool)[:2]
        pipeline.send(issue, msgspec.structs.replace(attach, funding_ref="escrow-shared"))
    # the payment system reports captures on its own topic, through the captures stage
    payer = PaymentSystem(pipeline.settings)
    try:
        for cert in (first, second):
            payer.confirm_funding(certificate_id=cert, funding_ref="escrow-shared",
                                  amount_minor=1_000, currency="EUR")
        low = payer.capture(certificate_id=unpaid, seller_id="seller", buyer_id="cat",
                            payment_ref="pay-low", captured_minor=PRICE - 1, currency="EUR")
        usd = payer.capture(certificate_id=unpaid, seller_id="seller", buyer_id="cat",
                            payment_ref="pay-usd", captured_minor=PRICE, currency="USD")
        payer.capture(certificate_id=sold, seller_id="seller", buyer_id="cat",
                      payment_ref="pay-1", captured_minor=PRICE, currency="EUR")
        # the same payment reported again for another certificate of the same seller
        payer.capture(certificate_id=other, seller_id="seller", buyer_id="dan",
                      payment_ref="pay-1", captured_minor=PRICE, currency="EUR")
        # a retry of the first report: one purchase, the second a duplicate
        payer.capture(certificate_id=sold, seller_id="seller", buyer_id="cat",
                      payment_ref="pay-1", captured_minor=PRICE, currency="EUR")
    finally:
        payer.close()
    # the payment system refunds part of the price (after the hold: no hold here), then
    # the same refund reference comes again under another command id
    refund = c.Refund(command_id="sold-rf1", certificate_id=sold, at_ms=t,
                      by="payment_system", amount_minor=1_000, refund_ref="rf-1")
    found = _rejections(pipeline, {"unpaid-buy", low, usd, "capture:pay-1"})
    pipeline.send(refund, msgspec.structs.replace(refund, command_id="sold-rf2"))
    found = _rejections(pipeline, {"unpaid-buy", low, usd, "capture:pay-1", "sold-rf2",
                                   "escrow:escrow-shared"})
    escrow = found["escrow:escrow-shared"]
    assert (escrow.reason.value, escrow.certificate_id) == ("funding_ref_used", second)

    assert found["unpaid-buy"].reason.value == "not_authorized"
    assert found[low].reason.value == "payment_below_price"
    assert found[usd].reason.value == "payment_currency_mismatch"
    assert found["sold-rf2"].reason.value == "refund_ref_used"
    reasons = sorted(decode_rejection(raw).reason.value
                     for raw in pipeline.read(pipeline.topics.rejections)
                     if decode_rejection(raw).command_id == "capture:pay-1")
    # once refused by the captures stage for the other certificate, once a duplicate
    assert reasons == ["duplicate", "payment_ref_used"]

    # the captured purchase paid the sharers and the seller, once
    paid = pipeline.wait_for(pipeline.topics.payments, 1)
    deadline = time.monotonic() + 60
    while {type(s).__name__ for s in _settlements(pipeline, sold)} < {
            "CommissionPayout", "SellerPayment", "BuyerRefund"} and time.monotonic() < deadline:
        time.sleep(0.5)
    kinds = sorted(type(s).__name__ for s in _settlements(pipeline, sold))
    assert kinds.count("CommissionPayout") == 2 and kinds.count("SellerPayment") == 1
    assert kinds.count("BuyerRefund") == 1, kinds  # rf-1 once, not twice
    # nothing at all was paid for what nobody paid for, nor for the reused reference
    assert paid is not None and _settlements(pipeline, unpaid) == []
    assert [type(s).__name__ for s in _settlements(pipeline, other)] == []
    report = pipeline.audit()
    assert report.ok, report.discrepancies


def test_no_single_record_stops_the_pipeline(pipeline):
    pipeline.start_all()
    t = int(time.time() * 1000)
    cid = cert_id("after-poison")
    topics = pipeline.topics
    deep_capture = b'{"type":"purchase","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    # retries: a partition the broker has not loaded yet answers NOT_LEADER (seen once in
    # CI, just after the topics were made); the refusal of a size is never retried. Not
    # idempotent: an idempotent producer takes a refused size as fatal and fails every
    # later write too
    raw = KafkaProducer(bootstrap_servers=pipeline.settings.bootstrap, acks="all",
                        max_request_size=2_000_000, retries=5, enable_idempotence=False)
    try:
        # 800 kB on commands and on the payment system's topic: the broker refuses them
        # (before, the sequencer's rejection copied it whole, exceeded the producer's
        # limit, and the stage restarted on the same record for ever)
        huge = b'{"type":"circulate","pad":"' + b"x" * 800_000 + b'"}'
        for topic in (topics.commands, topics.payment_results):
            with pytest.raises(MessageSizeTooLargeError):
                raw.send(topic, key=cid.encode(), value=huge).get(timeout=30)
        # the largest a topic takes, unsigned: a rejection of a few KiB with the digest
        big = b'{"type":"circulate","pad":"' + b"y" * (INPUT_MAX_MESSAGE_BYTES - 4_096) + b'"}'
        raw.send(topics.commands, key=cid.encode(), value=big).get(timeout=30)
        raw.send(topics.payment_results, key=b"seller/deep", value=deep_capture).get(timeout=30)
    finally:
        raw.close()
    # a signed, deeply nested command (RecursionError in the sequencer before)
    deep = b'{"type":"circulate","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    pipeline.sender.send_raw(cid.encode(), deep)
    pipeline.send(*setup(cid, t, price_minor=PRICE, budget_minor=1_000, attached_minor=100),
                  c.Circulate(command_id="after-s1", certificate_id=cid, at_ms=t,
                              account_id="ann"))
    digests = {hashlib.sha256(body).hexdigest(): body for body in (big, deep, deep_capture)}
    found = _rejections(pipeline, set(digests))
    big_r = found[hashlib.sha256(big).hexdigest()]
    assert big_r.reason.value == "unsigned"
    assert big_r.original_size == len(big) and big_r.original == big[:4096]
    assert found[hashlib.sha256(deep).hexdigest()].reason.value == "undecodable"
    # the deep capture went through the captures stage unread, and was refused
    assert found[hashlib.sha256(deep_capture).hexdigest()].reason.value == "unsigned"
    # traffic behind them flows: the circulation after them is accepted
    accepted = pipeline.wait_for(topics.accepted, 5)
    commands = [msgspec.json.decode(a, type=c.AcceptedCommand).command for a in accepted]
    assert "after-s1" in {x.command_id for x in commands}
    pipeline.assert_running()
