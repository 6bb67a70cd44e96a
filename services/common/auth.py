"""Command authentication: HMAC-SHA256 over the exact encoded command bytes.

The gateway (where users log in) signs each command it produces; the signature and
the id of the key travel in Kafka headers ``key-id`` and ``signature`` (hex). Keys
rotate by adding a new key id next to the old one, moving the signers over, then
removing the old id. Each key has a scope: ``gateway`` keys sign user commands,
``system`` keys sign the withdrawal timer's ``check_expiry`` commands only,
``payments`` keys sign what only the payment system may say (``confirm_funding``).
A ``draw`` key signs nothing: it is the sequencer's secret for random amounts
(domain.draw); the first one is used, and its id travels on each accepted record
that drew, so it rotates like the others.

Keys come from ``COMMISSION_KEYS`` (``id:scope:secret,id:scope:secret``) or from
the file named by ``COMMISSION_KEYS_FILE`` (one ``id:scope:secret`` per line). The
secrets are never logged, never put in metrics, and never appear in ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from schemas.commands import (
    COMMAND_TYPES,
    CheckExpiry,
    Command,
    ConfirmFunding,
    Refund,
    ReleaseHold,
    ReportPayment,
)
from schemas.rejections import Reason

KEY_ID_HEADER = "key-id"
SIGNATURE_HEADER = "signature"
SCOPES = ("gateway", "system", "payments", "draw")

# Which key scope may sign which command: the timer's checks only with a system key,
# what only the payment system knows only with a payments key, the rest only through
# the gateway where users log in. A draw key signs nothing.
SIGNER_SCOPE: dict[type, str] = {t: "gateway" for t in COMMAND_TYPES}
SIGNER_SCOPE[CheckExpiry] = "system"
SIGNER_SCOPE[ReleaseHold] = "system"
SIGNER_SCOPE[ConfirmFunding] = "payments"
SIGNER_SCOPE[ReportPayment] = "payments"


def signer_scope(command: Command) -> str:
    """The scope whose key must sign ``command``: a refund is the seller's (through the
    gateway) or the payment system's, as it says in ``by``."""
    if isinstance(command, Refund):
        return "payments" if command.by == "payment_system" else "gateway"
    return SIGNER_SCOPE[type(command)]

# Keys that make `make run` and the tests work out of the box. A deployment sets its
# own through the environment; services refuse to start with these when
# COMMISSION_ENV=production.
DEV_KEYS = ("dev-gw-1:gateway:dev-gateway-secret-change-me,"
            "dev-sys-1:system:dev-system-secret-change-me,"
            "dev-pay-1:payments:dev-payments-secret-change-me,"
            "dev-draw-1:draw:dev-draw-secret-change-me")


@dataclass(frozen=True)
class Key:
    key_id: str
    scope: str
    secret: bytes = field(repr=False)


class AuthError(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Keyring:
    keys: dict[str, Key]

    @classmethod
    def parse(cls, text: str) -> Keyring:
        keys: dict[str, Key] = {}
        for raw in text.replace("\n", ",").split(","):
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            key_id, scope, secret = entry.split(":", 2)
            if scope not in SCOPES:
                raise ValueError(f"key {key_id}: unknown scope {scope!r}")
            if len(secret) < 16:
                raise ValueError(f"key {key_id}: secret shorter than 16 characters")
            keys[key_id] = Key(key_id, scope, secret.encode())
        if not keys:
            raise ValueError("no keys configured")
        return cls(keys)

    @classmethod
    def from_env(cls) -> Keyring:
        path = os.environ.get("COMMISSION_KEYS_FILE")
        if path:
            return cls.parse(Path(path).read_text())
        text = os.environ.get("COMMISSION_KEYS")
        if text is None:
            if os.environ.get("COMMISSION_ENV") == "production":
                raise SystemExit("COMMISSION_KEYS or COMMISSION_KEYS_FILE must be set in production")
            text = DEV_KEYS
        return cls.parse(text)

    def first(self, scope: str) -> Key:
        for key in self.keys.values():
            if key.scope == scope:
                return key
        raise KeyError(f"no key with scope {scope!r} is configured (COMMISSION_KEYS)")

    def key_for(self, command: Command) -> Key:
        """The key that signs ``command``: the first of the scope that may sign it."""
        return self.first(signer_scope(command))

    def sign(self, body: bytes, key: Key) -> list[tuple[str, bytes]]:
        mac = hmac.new(key.secret, body, hashlib.sha256).hexdigest().encode()
        return [(KEY_ID_HEADER, key.key_id.encode()), (SIGNATURE_HEADER, mac)]

    def verify(self, body: bytes, headers: dict[str, bytes]) -> Key:
        """The key that signed ``body``, or AuthError. Constant-time comparison."""
        key_id = headers.get(KEY_ID_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if not key_id or not signature:
            raise AuthError(Reason.UNSIGNED, "the command carries no key-id or signature header")
        key = self.keys.get(key_id.decode("utf-8", "replace"))
        if key is None:
            raise AuthError(Reason.UNKNOWN_KEY, "the command is signed with an unknown key id")
        expected = hmac.new(key.secret, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(expected, signature):
            raise AuthError(Reason.BAD_SIGNATURE, "the signature does not match the command")
        return key


def header_dict(headers) -> dict[str, bytes]:
    """Kafka headers (list of pairs, or a mapping) as a dict; the last value wins."""
    if headers is None:
        return {}
    items = headers.items() if hasattr(headers, "items") else headers
    return {k if isinstance(k, str) else k.decode(): (v or b"") for k, v in items}
