"""Key rotation end to end (issue #22): add a new key next to the old one, move the
signer over, remove the old key; for the gateway's HMAC key and for the payment
system's Ed25519 key, through the real sequencer and captures stage."""

from __future__ import annotations

import base64
import signal
import time

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas import commands as c
from schemas.rejections import Rejection
from services.common.auth import Keyring
from services.paysim.sender import PaymentSystem
from tests.e2e.certificates import cert_id, paid, setup

encode = msgspec.json.Encoder().encode
PRICE = 5_000


def _pair(seed: bytes) -> tuple[str, str]:
    """(private line material, public line material) of an Ed25519 key."""
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(seed).decode(), base64.b64encode(public).decode()


PAY1, PUB1 = _pair(b"1" * 32)
PAY2, PUB2 = _pair(b"2" * 32)
G1, G2 = "g1:gateway:rotation-gateway-secret-one", "g2:gateway:rotation-gateway-secret-two"
STEADY = "s1:system:rotation-system-secret-0001,d1:draw:rotation-draw-secret-00001"
SIGNERS = Keyring.parse(f"{G1},{G2},p1:payments:ed25519-private:{PAY1},"
                        f"p2:payments:ed25519-private:{PAY2}")


def _engine(*keys: str) -> str:
    return ",".join((*keys, STEADY))


def _outcomes(pipeline, ids: set[str], timeout_s: float = 60.0) -> dict[str, str]:
    """command id -> "accepted" or its rejection reason, once every id has one."""
    deadline = time.monotonic() + timeout_s
    while True:
        out: dict[str, str] = {}
        for raw in pipeline.read(pipeline.topics.accepted):
            out[msgspec.json.decode(raw, type=c.AcceptedCommand).command.command_id] = "accepted"
        for raw in pipeline.read(pipeline.topics.rejections):
            r = msgspec.json.decode(raw, type=Rejection)
            # a refused signature is refused before the body is read: the rejection
            # has no command id, its original bytes have
            command_id = r.command_id or msgspec.json.decode(r.original).get("command_id")
            out.setdefault(command_id, r.reason.value)
        if ids <= set(out) or time.monotonic() > deadline:
            assert ids <= set(out), f"no outcome for {ids - set(out)}; logs in {pipeline.logs}"
            return {i: out[i] for i in ids}
        pipeline.assert_running()
        time.sleep(0.5)


def _restart_verifiers(pipeline, keys: str) -> None:
    for service in ("captures", "circulation"):
        if (service, 0) in pipeline.procs:
            pipeline.signal(service, sig=signal.SIGTERM)
        pipeline.start(service, COMMISSION_KEYS=keys)


def _send(pipeline, command: c.Command, key_id: str) -> None:
    body = encode(command)
    pipeline.sender.send_raw(command.certificate_id.encode(), body,
                             headers=Keyring.sign(body, SIGNERS.keys[key_id]))
    pipeline.sender.flush()


def _capture(pipeline, cert: str, ref: str, key_id: str) -> str:
    payer = PaymentSystem(pipeline.settings, Keyring({key_id: SIGNERS.keys[key_id]}))
    try:
        return payer.capture(certificate_id=cert, buyer_id="bea", **paid(cert, PRICE, ref))
    finally:
        payer.close()


def test_keys_rotate_without_a_gap_and_a_removed_key_signs_nothing(pipeline):
    for service in ("allocation", "cashout", "netting"):
        pipeline.start(service)
    pipeline.start("withdrawal", COMMISSION_KEYS=STEADY.split(",")[0])
    t = int(time.time() * 1000)
    one, two, three = cert_id("rot1"), cert_id("rot2"), cert_id("rot3")
    pool = {"price_minor": PRICE, "budget_minor": 500, "attached_minor": 50}

    # before: g1 and p1
    _restart_verifiers(pipeline, _engine(G1, f"p1:payments:ed25519-public:{PUB1}"))
    for command in (*setup(one, t, **pool), *setup(two, t, **pool)):
        _send(pipeline, command, "p1" if isinstance(command, c.ConfirmFunding) else "g1")
    assert set(_outcomes(pipeline, {f"{one}-post", f"{two}-post"}).values()) == {"accepted"}

    # add: the new keys first, the old ones still verify; the signers move over
    _restart_verifiers(pipeline, _engine(G2, G1, f"p2:payments:ed25519-public:{PUB2}",
                                         f"p1:payments:ed25519-public:{PUB1}"))
    share = lambda n, who: c.Circulate(  # noqa: E731
        command_id=f"rot-s{n}", certificate_id=one, at_ms=int(time.time() * 1000),
        account_id=who)
    _send(pipeline, share(1, "ann"), "g1")  # a signer not yet moved
    _send(pipeline, share(2, "ben"), "g2")
    moved = _capture(pipeline, one, "pay-rot-1", "p2")
    old_payer = _capture(pipeline, two, "pay-rot-2", "p1")
    assert _outcomes(pipeline, {"rot-s1", "rot-s2", moved, old_payer}) == dict.fromkeys(
        ("rot-s1", "rot-s2", moved, old_payer), "accepted")

    # remove: only the new keys; what the old ones sign is refused, by both verifiers
    _restart_verifiers(pipeline, _engine(G2, f"p2:payments:ed25519-public:{PUB2}"))
    for command in setup(three, int(time.time() * 1000), **pool):
        _send(pipeline, command, "p2" if isinstance(command, c.ConfirmFunding) else "g2")
    stale_share = c.Circulate(command_id="rot-s3", certificate_id=three,
                              at_ms=int(time.time() * 1000), account_id="cat")
    _send(pipeline, stale_share, "g1")
    stale_capture = _capture(pipeline, three, "pay-rot-3", "p1")
    new_share = msgspec.structs.replace(stale_share, command_id="rot-s4")
    _send(pipeline, new_share, "g2")
    outcomes = _outcomes(pipeline, {"rot-s3", stale_capture, "rot-s4", f"{three}-post"})
    assert outcomes == {"rot-s3": "unknown_key", stale_capture: "unknown_key",
                        "rot-s4": "accepted", f"{three}-post": "accepted"}
