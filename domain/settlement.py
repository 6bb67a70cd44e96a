"""Deterministic settlement ids.

An id is SHA-256 over (certificate, kind, payee, causing command), truncated to 128
bits. Each of those is fixed by the command sequence, so a replayed command
re-creates the same id and a payment system that dedupes on it pays once. Within one
certificate the tuple is unique: a command pays an account at most once per kind.
"""

from __future__ import annotations

import hashlib


def settlement_id(certificate_id: str, kind: str, payee_id: str, command_id: str) -> str:
    raw = "\x1f".join((certificate_id, kind, payee_id, command_id)).encode()
    return hashlib.sha256(raw).hexdigest()[:32]
