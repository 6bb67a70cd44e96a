"""Every kind of bad command, interleaved with good ones: the good ones have exactly
their effects, every bad one has exactly one rejection with its reason, and the
services keep running."""

from __future__ import annotations

import time
from collections import Counter

import msgspec

from schemas import commands as c
from schemas.rejections import Rejection
from services.common.auth import Key
from tests.e2e.certificates import cert_id, paid, setup
from tests.e2e.traffic import assert_outputs_as_expected, expect

encode = msgspec.json.Encoder().encode
decode_rejection = msgspec.json.Decoder(Rejection).decode


def test_poison_input_is_rejected_once_and_changes_nothing(pipeline):
    pipeline.start_all()
    t = int(time.time() * 1000)
    cid = cert_id("poison")
    good = [
        *setup(cid, t, name="Kettle", price_minor=50_000, budget_minor=5_000,
               attached_minor=500),
        c.Circulate(command_id="g-s1", certificate_id=cid, at_ms=t, account_id="ann"),
        c.Circulate(command_id="g-s2", certificate_id=cid, at_ms=t, account_id="ben", via="ann"),
        c.Purchase(command_id="g-buy", certificate_id=cid, at_ms=t, account_id="cat",
                   **paid(cid, 50_000, "pay-p")),
    ]
    key = cid.encode()
    circ = {"type": "circulate", "command_id": "b-x", "certificate_id": cid, "at_ms": t,
            "account_id": "dan"}
    forged_key = Key("dev-gw-1", "gateway", b"not-the-real-secret-at-all")
    bad: list[tuple[bytes, bytes | None, str, dict]] = [
        # (body, kafka key, expected reason, how to send)
        (b"\x00\x01 not json {", key, "undecodable", {}),
        (encode({**circ, "command_id": "b-v9", "v": 9}), key, "unsupported_version", {}),
        (encode({**circ, "command_id": "b-field", "account_id": "has space"}), key,
         "invalid_field", {}),
        (encode({"type": "attach_pool", "command_id": "b-neg", "certificate_id": cid, "at_ms": t,
                 "account_id": "f", "funding_ref": "r", "budget_minor": -5,
                 "attached_minor": 1, "currency": "EUR"}), key, "amount_out_of_range", {}),
        (encode({"type": "attach_pool", "command_id": "b-big", "certificate_id": cid, "at_ms": t,
                 "account_id": "f", "funding_ref": "r", "budget_minor": 10**19,
                 "attached_minor": 1, "currency": "EUR"}), key, "amount_out_of_range", {}),
        (encode({**circ, "command_id": "b-unknown", "certificate_id": "nope"}), b"nope",
         "unknown_certificate", {}),
        (encode({**circ, "command_id": "b-keymis"}), b"other-key", "key_mismatch", {}),
        (encode({**circ, "command_id": "b-unsigned"}), key, "unsigned", {"sign": False}),
        (encode({**circ, "command_id": "b-forged"}), key, "bad_signature",
         {"headers": pipeline.keyring.sign(encode({**circ, "command_id": "b-forged"}),
                                           forged_key)}),
        (encode({**circ, "command_id": "b-nokey"}), key, "unknown_key",
         {"headers": [("key-id", b"who-knows"), ("signature", b"00" * 32)]}),
        (encode({**circ, "command_id": "b-stale", "at_ms": t - 3_600_000}), key, "stale", {}),
        # a command captured an hour ago, replayed with its record timestamp backdated to
        # match: the broker stamps the time on `commands`, not the producer
        (encode({**circ, "command_id": "b-backdated", "at_ms": t - 3_600_000}), key, "stale",
         {"timestamp_ms": t - 3_600_000}),
        (encode({"type": "check_expiry", "command_id": "b-scope", "certificate_id": cid,
                 "at_ms": t}), key, "not_authorized", {}),
        # a user cannot say the escrow is there: only a payments key can
        (encode({"type": "confirm_funding", "command_id": "b-confirm", "certificate_id": cid,
                 "at_ms": t, "funding_ref": f"escrow-{cid}", "amount_minor": 5_000,
                 "currency": "EUR"}), key, "not_authorized", {}),
        # a stranger attaching a pool of 1 first (any time: it is refused for who it is)
        (encode({"type": "attach_pool", "command_id": "b-stranger", "certificate_id": cid,
                 "at_ms": t, "account_id": "mallory", "funding_ref": "made-up",
                 "budget_minor": 1, "attached_minor": 1, "currency": "EUR"}), key,
         "not_authorized", {}),
        # another seller issuing a copy of this seller's offer
        (encode(c.IssueCertificate(
            command_id="b-offer", certificate_id=cid.replace("-00001", "-00002"), at_ms=t,
            account_id="mallory", offer_id=cid.rpartition("-")[0], serial=2, copies=2,
            name="Fake", price_minor=1, currency="EUR")),
         cid.replace("-00001", "-00002").encode(), "offer_not_owned", {}),
    ]
    # sent after the good flow: a replay, a conflicting replay, a share after purchase
    share = good[4]
    assert share.command_id == "g-s1"
    after = [
        (encode(share), key, "duplicate", {}),
        # the same command retried with a later stamp: a duplicate, not a conflict
        (encode(msgspec.structs.replace(share, at_ms=t + 2_000)), key, "duplicate", {}),
        (encode(c.Circulate(command_id="g-s1", certificate_id=cid, at_ms=t, account_id="eve")),
         key, "duplicate_conflict", {}),
        (encode(c.Circulate(command_id="b-late", certificate_id=cid, at_ms=t, account_id="fay")),
         key, "certificate_purchased", {}),
    ]
    for i, command in enumerate(good):
        pipeline.sender.send(command)
        body, k, _, how = bad[i * 2] if i * 2 < len(bad) else (None, None, None, None)
        if body is not None:
            pipeline.sender.send_raw(k, body, **how)
        if i * 2 + 1 < len(bad):
            body, k, _, how = bad[i * 2 + 1]
            pipeline.sender.send_raw(k, body, **how)
    for body, k, _, how in [*bad[len(good) * 2:], *after]:
        pipeline.sender.send_raw(k, body, **how)
    pipeline.sender.flush()

    topics = pipeline.topics
    # outputs as the core computes them from what the pipeline received, and the
    # good commands, and only they, accepted
    want = assert_outputs_as_expected(pipeline, timeout_s=90)
    assert want.accepted == expect(good).accepted
    rejections = [decode_rejection(r)
                  for r in pipeline.wait_for(topics.rejections, len(bad) + len(after))]
    got = Counter((r.original, r.reason.value) for r in rejections)
    assert got == Counter((body, reason) for body, _, reason, _ in [*bad, *after])
    for r in rejections:
        assert r.source_topic == topics.commands and r.source_offset >= 0
    pipeline.assert_running()
    assert pipeline.audit().ok
