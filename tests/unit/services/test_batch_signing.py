"""A batch of the payment system's records signed once (services/common/merkle.py,
Keyring.sign_batch / verify): every record still stands alone, and nothing that is
not exactly one of the signed records passes."""

from __future__ import annotations

import base64
import random
from hashlib import sha256

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas import commands as c
from schemas.rejections import Reason
from services.circulation.intake import sequence
from services.common import auth, merkle
from services.common.auth import (
    BATCH_CONTEXT,
    BATCH_PROOF_HEADER,
    SIGNATURE_HEADER,
    AuthError,
    Key,
    Keyring,
)
from services.common.rejection import Source

SEED = b"b" * 32
PUBLIC = base64.b64encode(Ed25519PrivateKey.from_private_bytes(SEED).public_key()
                          .public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
ENGINE = Keyring.parse(f"pay:payments:ed25519-public:{PUBLIC},"
                       "gw:gateway:0123456789abcdef-gw,draw:draw:0123456789abcdef-draw")
PAYER = Key("pay", "payments", SEED, "ed25519-private")
T = 1_700_000_000_000


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162's Merkle Tree Hash, written out from its definition."""
    if len(leaves) == 1:
        return sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _results(n: int) -> list[bytes]:
    return [msgspec.json.encode(c.ReportPayment(
        command_id=f"result:{i:032x}:1", certificate_id=f"s~o-{i:05d}", at_ms=T,
        settlement_id=f"{i:032x}", attempt=1, result="settled")) for i in range(n)]


def _engine() -> Keyring:
    return Keyring(dict(ENGINE.keys))  # its own memory of checked roots


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 64, 100])
def test_every_path_leads_to_the_root_of_the_rfc_tree(n):
    data = [f"record {i}".encode() for i in range(n)]
    root, paths = merkle.tree([merkle.leaf_hash(d) for d in data])
    assert root == _mth(data)
    for index, path in enumerate(paths):
        assert merkle.root_from_path(merkle.leaf_hash(data[index]), index, n, path) == root
        if n > 1:  # the same path claimed for another place in the tree leads elsewhere
            other = (index + 1) % n
            assert merkle.root_from_path(merkle.leaf_hash(data[index]), other, n, path) != root
            assert merkle.root_from_path(merkle.leaf_hash(data[index]), index, n,
                                         path + [root]) is None
            assert merkle.root_from_path(merkle.leaf_hash(data[index]), index, n,
                                         path[:-1]) != root
    # a node is never a leaf: the two children's concatenation is no record of the tree
    if n == 2:
        joined = merkle.leaf_hash(data[0]) + merkle.leaf_hash(data[1])
        assert merkle.root_from_path(merkle.leaf_hash(joined), 0, 1, []) != root


def test_a_batch_is_one_signature_check_and_each_record_stands_alone(monkeypatch):
    bodies = _results(64)
    signed = Keyring.sign_batch(bodies, PAYER)
    assert len({dict(h)[SIGNATURE_HEADER] for h in signed}) == 1  # one signature
    checks = []
    real = auth._check
    monkeypatch.setattr(auth, "_check", lambda *a: (checks.append(a[0]), real(*a)))
    engine = _engine()
    order = list(range(64))
    random.Random(3).shuffle(order)  # any order: the records go to several partitions
    for i in order:
        assert engine.verify(bodies[i], dict(signed[i])).key_id == "pay"
    assert len(checks) == 1 and checks[0].startswith(BATCH_CONTEXT)
    # a second verifier (the sequencer after the captures stage) checks it once too
    other = _engine()
    for i in order:
        other.verify(bodies[i], dict(signed[i]))
    assert len(checks) == 2


def test_a_batch_of_one_is_a_plain_signature():
    body = _results(1)[0]
    (headers,) = Keyring.sign_batch([body], PAYER)
    assert BATCH_PROOF_HEADER not in dict(headers)
    assert _engine().verify(body, dict(headers)).key_id == "pay"


def _refused(body: bytes, headers: dict, engine: Keyring | None = None) -> Reason:
    with pytest.raises(AuthError) as refused:
        (engine or _engine()).verify(body, headers)
    return refused.value.reason


def test_nothing_but_the_signed_records_passes():
    bodies = _results(9)
    signed = [dict(h) for h in Keyring.sign_batch(bodies, PAYER)]
    engine = _engine()
    engine.verify(bodies[0], signed[0])  # the root is known to this verifier now
    changed = bodies[4].replace(b'"settled"', b'"failed"')
    assert _refused(changed, signed[4], engine) is Reason.BAD_SIGNATURE
    # another record's proof, a record's proof on another record
    assert _refused(bodies[4], signed[5], engine) is Reason.BAD_SIGNATURE
    # the batch's signature alone is no signature of any record
    bare = {k: v for k, v in signed[4].items() if k != BATCH_PROOF_HEADER}
    assert _refused(bodies[4], bare) is Reason.BAD_SIGNATURE
    # a record signed alone cannot be passed off as a member of a known batch
    alone = dict(Keyring.sign(bodies[4], PAYER))
    assert _refused(bodies[4], alone | {BATCH_PROOF_HEADER: signed[4][BATCH_PROOF_HEADER]},
                    engine) is Reason.BAD_SIGNATURE
    # the root's signature, once known, does not vouch for another key's batch
    forger = Key("pay", "payments", b"f" * 32, "ed25519-private")
    forged = [dict(h) for h in Keyring.sign_batch(bodies, forger)]
    assert _refused(bodies[4], forged[4], engine) is Reason.BAD_SIGNATURE
    # nor does a forged signature over a root this verifier trusts already
    assert _refused(bodies[4], signed[4] | {SIGNATURE_HEADER: forged[4][SIGNATURE_HEADER]},
                    engine) is Reason.BAD_SIGNATURE
    # the root itself signed as a record body: a body is not a root
    root_sig = dict(Keyring.sign(BATCH_CONTEXT + b"\x00" * 32, PAYER))
    assert _refused(bodies[4], root_sig | {BATCH_PROOF_HEADER: b"0/1/"}) is Reason.BAD_SIGNATURE
    # and what was signed still passes
    assert engine.verify(bodies[4], signed[4]).key_id == "pay"


@pytest.mark.parametrize("proof", [
    b"", b"/", b"0/9", b"x/9/", b"-1/9/", b"9/9/", b"0/0/", b"0/99999999/",
    b"0/9/zz", b"0/9/" + b"ab" * 31, b"0/9/" + b"00" * 32 * 17, b"\xff/9/", b"\xd9\xa3/9/",
    b"0" * 5000 + b"/9/", b"0/9/" + b"00" * 32 * 3,  # a path one hash short of 9 leaves
    b"0/9/" + b"00" * 32 * 5,  # one too long
    b"00/9/", b"0/09/", b"+0/9/", b"0/9/ ", b" 0/9/", b"0/9/" + b"AB" * 32,
    b"0/9/" + b"ab" * 16 + b" " + b"ab" * 16, b"0/65537/",
])
def test_a_malformed_proof_is_a_bad_signature_not_a_crash(proof):
    bodies = _results(9)
    headers = dict(Keyring.sign_batch(bodies, PAYER)[0]) | {BATCH_PROOF_HEADER: proof}
    assert _refused(bodies[0], headers) is Reason.BAD_SIGNATURE


def test_the_sequencer_takes_a_batch_signed_result_and_refuses_an_altered_one():
    bodies = _results(5)
    signed = [dict(h) for h in Keyring.sign_batch(bodies, PAYER)]

    def run(body: bytes, headers: dict):
        source = Source("commands", 0, 42, T, b"s~o-00002", headers)
        return sequence(None, body, source, ENGINE, max_skew_ms=60_000,
                        draw_key=ENGINE.keys["draw"])

    # authenticated, decoded and valid: the core's own verdict on a certificate it
    # has never seen (the same as for the record signed alone)
    alone = run(bodies[2], dict(Keyring.sign(bodies[2], PAYER))).rejection.reason
    assert alone is Reason.UNKNOWN_CERTIFICATE
    assert run(bodies[2], signed[2]).rejection.reason is alone
    altered = bodies[2].replace(b"s~o-00002", b"s~o-00003")
    assert run(altered, signed[2]).rejection.reason is Reason.BAD_SIGNATURE


def test_a_signature_is_written_one_way_only():
    """bytes.fromhex takes spaces and capitals: a replay padded with 250 kB of them
    verified, and each padding was a new entry in the memo of checked roots."""
    bodies = _results(3)
    signed = [dict(h) for h in Keyring.sign_batch(bodies, PAYER)]
    alone = dict(Keyring.sign(bodies[0], PAYER))
    for headers in (signed[0], alone):
        sig = headers[SIGNATURE_HEADER]
        for variant in (b" " + sig, sig + b" ", sig[:64] + b" " + sig[64:], sig.upper(),
                        sig[:-2]):
            assert _refused(bodies[0], headers | {SIGNATURE_HEADER: variant}) \
                is Reason.BAD_SIGNATURE


def test_the_memo_of_checked_roots_is_bounded_and_forgets_the_oldest(monkeypatch):
    monkeypatch.setattr(auth, "VERIFIED_ROOTS", 4)
    engine = _engine()
    batches = [(bodies := _results(2 + i), [dict(h) for h in Keyring.sign_batch(bodies, PAYER)])
               for i in range(6)]
    for bodies, signed in batches:
        engine.verify(bodies[0], signed[0])
        assert len(engine._roots) <= 4
    roots = [root for _, root, _ in engine._roots]
    tree_roots = [merkle.tree([merkle.leaf_hash(b) for b in bodies])[0] for bodies, _ in batches]
    assert roots == tree_roots[2:]  # the last four, not none of the earlier ones


def test_batches_are_ed25519_only_and_a_root_is_no_command():
    gw = ENGINE.keys["gw"]
    bodies = _results(3)
    assert all(BATCH_PROOF_HEADER not in dict(h) for h in Keyring.sign_batch(bodies, gw))
    root = merkle.tree([merkle.leaf_hash(b) for b in bodies])[0]
    hmac_batch = dict(Keyring.sign(BATCH_CONTEXT + root, gw))
    proof = dict(Keyring.sign_batch(bodies, PAYER)[0])[BATCH_PROOF_HEADER]
    assert _refused(bodies[0], hmac_batch | {BATCH_PROOF_HEADER: proof}) is Reason.BAD_SIGNATURE
    # a root signed alone by the payment system is not a command it said
    signed_root = dict(Keyring.sign(BATCH_CONTEXT + root, PAYER))
    assert _refused(BATCH_CONTEXT + root, signed_root) is Reason.BAD_SIGNATURE
