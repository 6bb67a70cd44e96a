"""Command authentication: who may say what, checked on the exact encoded bytes.

Every signer sends ``key-id`` and ``signature`` (hex) headers with the command. A
signer that sends records in batches may sign a batch once: its records then carry a
``batch-proof`` header too, their signature is over the root of the batch's Merkle
tree and the proof is the record's path to it (:meth:`Keyring.sign_batch`,
services/common/merkle.py); a verifier checks a root's signature once and each record
of its batch with a few hashes.
Two kinds of key, chosen by who holds them:

- **Inside the engine, HMAC-SHA256** (``id:scope:secret``). ``gateway`` keys sign user
  commands (the API holds one, the sequencer a copy to verify); ``system`` keys sign
  the withdrawal timer's ``check_expiry`` and ``release_hold`` (the timer and the
  sequencer); ``fraud`` keys sign the fraud stage's ``flag_commission`` and nothing
  else (the fraud stage and the sequencer); ``session`` keys sign the API's session tokens (the API only); a ``draw``
  key signs nothing, it is the sequencer's secret for random amounts (domain.draw).
  Both ends of an HMAC key are ours, and a verify costs ~1 us against ~125 us for
  Ed25519 on this machine: at the gateway's volume that would be the sequencer's
  whole budget per command. Each process holds only the secrets it uses
  (deploy/keys.py says which; a test reads the manifests against it).
- **From outside, Ed25519** (``id:payments:ed25519-public:<base64 of 32 bytes>``).
  What only the payment system may say (``confirm_funding``, a captured ``purchase``,
  its ``refund``s, ``report_payment``) is signed with the payment system's private
  key, which the engine never holds: it verifies with the public key, so nothing it
  holds can forge the payment system's word. The payment system (and the demo's
  simulator, services/paysim) loads ``id:payments:ed25519-private:<base64 seed>``;
  an engine keyring refuses such a line (:meth:`Keyring.for_engine`).

Keys rotate by adding a new key id next to the old one, moving the signers over,
then removing the old id. Keys come from ``COMMISSION_KEYS`` (comma-separated) or
the file named by ``COMMISSION_KEYS_FILE`` (one per line). Secrets are never logged,
never put in metrics, and never appear in ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from schemas.commands import (
    COMMAND_TYPES,
    CheckExpiry,
    Command,
    ConfirmFunding,
    FlagCommission,
    Purchase,
    Refund,
    ReleaseHold,
    ReportPayment,
)
from schemas.rejections import Reason
from services.common import merkle
from services.common.settings import production

KEY_ID_HEADER = "key-id"
SIGNATURE_HEADER = "signature"
# a record signed as one of a batch: "<index>/<size>/<audit path, hex>"; its signature
# is then over BATCH_CONTEXT and the batch's Merkle root (services/common/merkle.py)
BATCH_PROOF_HEADER = "batch-proof"
# No command's body starts with these bytes (a body is a JSON object), so a signature
# over a batch's root never stands for one over a body, nor the other way round.
BATCH_CONTEXT = b"commission batch v1\x00"
# roots whose signatures a keyring has checked, kept for the batch's other records
VERIFIED_ROOTS = 4096
SCOPES = ("gateway", "system", "payments", "draw", "session", "fraud")
# the payment system's keys are Ed25519 only: an HMAC secret for it would let whoever
# holds the engine's files speak for the payment system
ASYMMETRIC_SCOPES = ("payments",)

# Which key scope may sign which command: the timer's checks only with a system key,
# what only the payment system knows (an escrow hold, a captured payment, a result)
# only with a payments key, the rest only through the gateway where users log in. A
# purchase is the payment system's word (SPEC 8a): one signed by the gateway is
# refused. Draw and session keys sign no command.
SIGNER_SCOPE: dict[type, str] = {t: "gateway" for t in COMMAND_TYPES}
SIGNER_SCOPE[CheckExpiry] = "system"
SIGNER_SCOPE[ReleaseHold] = "system"
SIGNER_SCOPE[ConfirmFunding] = "payments"
SIGNER_SCOPE[ReportPayment] = "payments"
SIGNER_SCOPE[Purchase] = "payments"
# the fraud stage's flags: a key that can say nothing else (it holds no other)
SIGNER_SCOPE[FlagCommission] = "fraud"


def signer_scope(command: Command) -> str:
    """The scope whose key must sign ``command``: a refund is the seller's (through the
    gateway) or the payment system's, as it says in ``by``."""
    if isinstance(command, Refund):
        return "payments" if command.by == "payment_system" else "gateway"
    return SIGNER_SCOPE[type(command)]

# Keys that make `make run` and the tests work out of the box. A deployment sets its
# own through the environment; services refuse to start with these when
# COMMISSION_ENV=production. The payment system's development key pair: the engine
# gets the public half, the demo's payment system (services/paysim) the private one.
DEV_PAYMENTS_PUBLIC = "dev-pay-2:payments:ed25519-public:0XGixNwEtm21QhJ8T1KW5jiQjcXh5c8EdTvYKrrShXI="
DEV_PAYMENTS_PRIVATE = ("dev-pay-2:payments:ed25519-private:"
                        "ZGV2LXBheW1lbnQtc3lzdGVtLXNlZWQtY2hhbmdlLW0=")
DEV_KEYS = ("dev-gw-1:gateway:dev-gateway-secret-change-me,"
            "dev-sys-1:system:dev-system-secret-change-me,"
            f"{DEV_PAYMENTS_PUBLIC},"
            "dev-draw-1:draw:dev-draw-secret-change-me,"
            "dev-session-1:session:dev-session-secret-change-me,"
            "dev-fraud-1:fraud:dev-fraud-secret-change-me")

KeyKind = Literal["hmac", "ed25519-public", "ed25519-private"]


@dataclass(frozen=True)
class Key:
    """One key. ``secret`` is the HMAC secret, or the raw 32 bytes of an Ed25519 key
    (public or private seed, as ``kind`` says)."""

    key_id: str
    scope: str
    secret: bytes = field(repr=False)
    kind: KeyKind = "hmac"

    @property
    def can_sign(self) -> bool:
        return self.kind != "ed25519-public"

    @cached_property
    def private_key(self) -> Ed25519PrivateKey:
        """Built once: deriving it from the seed cost as much as the signature."""
        if self.kind != "ed25519-private":
            raise ValueError(f"key {self.key_id} is a public key: it verifies, it cannot sign")
        return Ed25519PrivateKey.from_private_bytes(self.secret)

    @cached_property
    def public_key(self) -> Ed25519PublicKey:
        if self.kind == "ed25519-public":
            return Ed25519PublicKey.from_public_bytes(self.secret)
        if self.kind == "ed25519-private":
            return self.private_key.public_key()
        raise ValueError(f"key {self.key_id} is not an Ed25519 key")


def _raw32(key_id: str, text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"key {key_id}: not base64") from None
    if len(raw) != 32:
        raise ValueError(f"key {key_id}: an Ed25519 key is 32 bytes, got {len(raw)}")
    return raw


def _parse_key(entry: str) -> Key:
    key_id, scope, rest = entry.split(":", 2)
    if scope not in SCOPES:
        raise ValueError(f"key {key_id}: unknown scope {scope!r}")
    kind, _, material = rest.partition(":")
    if kind in ("ed25519-public", "ed25519-private"):
        return Key(key_id, scope, _raw32(key_id, material), kind)  # type: ignore[arg-type]
    if scope in ASYMMETRIC_SCOPES:
        raise ValueError(f"key {key_id}: a {scope} key must be Ed25519 "
                         f"(ed25519-public:<base64>), not a shared secret")
    if len(rest) < 16:
        raise ValueError(f"key {key_id}: secret shorter than 16 characters")
    return Key(key_id, scope, rest.encode())


class AuthError(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Keyring:
    keys: dict[str, Key]
    # (key id, root, signature) of batch signatures checked already: a batch's first
    # record costs a signature check, its others a few hashes (merkle.py)
    _roots: dict[tuple[str, bytes, bytes], None] = field(
        default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> Keyring:
        keys: dict[str, Key] = {}
        for raw in text.replace("\n", ",").split(","):
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            key = _parse_key(entry)
            keys[key.key_id] = key
        if not keys:
            raise ValueError("no keys configured")
        return cls(keys)

    @classmethod
    def from_env(cls, variable: str = "COMMISSION_KEYS", dev: str = DEV_KEYS) -> Keyring:
        """The keys in ``$variable`` or in the file ``${variable}_FILE``; the
        development ``dev`` keys when neither is set (refused in production)."""
        path = os.environ.get(f"{variable}_FILE")
        if path:
            return cls.parse(Path(path).read_text())
        text = os.environ.get(variable)
        if text is None:
            if production():
                raise SystemExit(f"{variable} or {variable}_FILE must be set in production")
            text = dev
        return cls.parse(text)

    def with_keys(self, other: Keyring) -> Keyring:
        """This keyring and ``other``'s keys (``other``'s win on a shared id): for a
        process that plays several parties, as the load generator does."""
        return Keyring({**self.keys, **other.keys})

    def for_engine(self) -> Keyring:
        """This keyring, checked for use inside the engine: a service that holds the
        payment system's private key could forge its word, so it refuses to start."""
        for key in self.keys.values():
            if key.scope in ASYMMETRIC_SCOPES and key.kind == "ed25519-private":
                raise SystemExit(f"key {key.key_id}: the engine holds only the payment "
                                 f"system's public key (ed25519-public), never its private key")
        return self

    def first(self, scope: str) -> Key:
        """The first key of ``scope`` (the one to sign or draw with)."""
        for key in self.keys.values():
            if key.scope == scope:
                return key
        raise KeyError(f"no key with scope {scope!r} is configured (COMMISSION_KEYS)")

    def signing_key(self, scope: str) -> Key:
        """The first key of ``scope`` that can sign (not a public key)."""
        for key in self.keys.values():
            if key.scope == scope and key.can_sign:
                return key
        raise KeyError(f"no signing key with scope {scope!r} is configured")

    def scopes(self) -> set[str]:
        return {key.scope for key in self.keys.values()}

    def key_for(self, command: Command) -> Key:
        """The key that signs ``command``: the first of the scope that may sign it."""
        return self.signing_key(signer_scope(command))

    @staticmethod
    def sign(body: bytes, key: Key) -> list[tuple[str, bytes]]:
        return [(KEY_ID_HEADER, key.key_id.encode()), (SIGNATURE_HEADER, _mac(body, key))]

    @staticmethod
    def sign_batch(bodies: list[bytes], key: Key) -> list[list[tuple[str, bytes]]]:
        """Headers for each of ``bodies``, signed together: one Ed25519 signature
        over the root of their Merkle tree, and each record's audit path to it. A
        batch of one, or an HMAC key's (a check costs ~1 us: nothing to save), is
        signed record by record. Each record stands alone: a verifier needs none of
        the others, in any order, on any partition."""
        if len(bodies) == 1 or key.kind == "hmac":
            return [Keyring.sign(body, key) for body in bodies]
        root, paths = merkle.tree([merkle.leaf_hash(body) for body in bodies])
        key_id, mac = key.key_id.encode(), _mac(BATCH_CONTEXT + root, key)
        size = len(bodies)
        return [[(KEY_ID_HEADER, key_id), (SIGNATURE_HEADER, mac),
                 (BATCH_PROOF_HEADER, f"{index}/{size}/{b''.join(path).hex()}".encode())]
                for index, path in enumerate(paths)]

    def verify(self, body: bytes, headers: dict[str, bytes]) -> Key:
        """The key that signed ``body`` (alone, or as one of a batch), or AuthError.
        Constant-time comparison."""
        key_id = headers.get(KEY_ID_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if not key_id or not signature:
            raise AuthError(Reason.UNSIGNED, "the command carries no key-id or signature header")
        key = self.keys.get(key_id.decode("utf-8", "replace"))
        if key is None:
            raise AuthError(Reason.UNKNOWN_KEY, "the command is signed with an unknown key id")
        if key.kind != "hmac" and not _ED25519_HEX.fullmatch(signature):
            # one way of writing a signature: the memo below is keyed by it, and
            # bytes.fromhex would take 250 kB of spaces around a replayed one
            raise AuthError(Reason.BAD_SIGNATURE, "the signature is not 128 lowercase hex digits")
        proof = headers.get(BATCH_PROOF_HEADER)
        if proof is None:
            if body.startswith(BATCH_CONTEXT):  # a batch's root is no command
                raise AuthError(Reason.BAD_SIGNATURE, "the signature does not match the command")
            _check(body, signature, key)
            return key
        if key.kind == "hmac":
            raise AuthError(Reason.BAD_SIGNATURE, "only Ed25519 keys sign batches")
        root = _batch_root(body, proof)
        seen = (key.key_id, root, signature)
        if seen not in self._roots:
            _check(BATCH_CONTEXT + root, signature, key)
            while len(self._roots) >= VERIFIED_ROOTS:
                del self._roots[next(iter(self._roots))]  # the oldest first
            self._roots[seen] = None
        return key


_ED25519_HEX = re.compile(rb"[0-9a-f]{128}")
# index and size without leading zeros (at most 5 digits: MAX_LEAVES is 65,536), then
# at most 16 hashes of 32 bytes in lowercase hex
_PROOF = re.compile(rb"(0|[1-9][0-9]{0,4})/(0|[1-9][0-9]{0,4})/((?:[0-9a-f]{64}){0,16})")


def _mac(data: bytes, key: Key) -> bytes:
    if key.kind == "hmac":
        return hmac.new(key.secret, data, hashlib.sha256).hexdigest().encode()
    return key.private_key.sign(data).hex().encode()


def _check(data: bytes, signature: bytes, key: Key) -> None:
    if key.kind == "hmac":
        if not hmac.compare_digest(_mac(data, key), signature):
            raise AuthError(Reason.BAD_SIGNATURE, "the signature does not match the command")
        return
    try:
        key.public_key.verify(bytes.fromhex(signature.decode("ascii")), data)
    except (InvalidSignature, ValueError, UnicodeDecodeError):
        raise AuthError(Reason.BAD_SIGNATURE,
                        "the signature does not match the command") from None


def _batch_root(body: bytes, proof: bytes) -> bytes:
    """The root that ``proof`` ("<index>/<size>/<path hex>", written one way only)
    leads to from ``body``."""
    match = _PROOF.fullmatch(proof)
    if match is None:
        raise AuthError(Reason.BAD_SIGNATURE, "the batch proof is malformed")
    index, size, path = match.groups()
    hashes = bytes.fromhex(path.decode("ascii"))
    siblings = [hashes[i:i + merkle.HASH_SIZE] for i in range(0, len(hashes), merkle.HASH_SIZE)]
    root = merkle.root_from_path(merkle.leaf_hash(body), int(index), int(size), siblings)
    if root is None:
        raise AuthError(Reason.BAD_SIGNATURE, "the batch proof does not fit its batch")
    return root


def header_dict(headers) -> dict[str, bytes]:
    """Kafka headers (list of pairs, or a mapping) as a dict; the last value wins."""
    if headers is None:
        return {}
    items = headers.items() if hasattr(headers, "items") else headers
    return {k if isinstance(k, str) else k.decode(): (v or b"") for k, v in items}
