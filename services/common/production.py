"""What a process refuses to start with when ``COMMISSION_ENV=production``.

The defaults that make ``make run`` and the tests work out of the box would each give
an outsider the engine: the development keys and the example key files are public
(this repository), and Kafka in the clear lets anyone on the network read sessions
and payments and, without ACLs, write commands. A production process checks at start
and exits with a message naming what to change (never the secret itself).
"""

from __future__ import annotations

from pathlib import Path

from services.common.auth import DEV_KEYS, DEV_PAYMENTS_PRIVATE, Keyring
from services.common.settings import Settings, production

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "keys"
CLEARTEXT = ("PLAINTEXT", "SASL_PLAINTEXT")


def _public_material() -> set[bytes]:
    """Every key material published in this repository: the development keys and the
    example key files."""
    texts = [DEV_KEYS, DEV_PAYMENTS_PRIVATE]
    texts += [path.read_text() for path in sorted(EXAMPLES.glob("*.example"))]
    out: set[bytes] = set()
    for text in texts:
        out |= {key.secret for key in Keyring.parse(text).keys.values()}
    return out


def insecure(settings: Settings, keyring: Keyring) -> list[str]:
    """Why this process must not run in production (empty: nothing found)."""
    problems = []
    published = _public_material()
    for key in keyring.keys.values():
        if key.secret in published:
            problems.append(f"key {key.key_id} ({key.scope}) is a development or example key "
                            "published in this repository: generate your own")
    if settings.kafka_auth.security_protocol in CLEARTEXT:
        problems.append(f"KAFKA_SECURITY_PROTOCOL={settings.kafka_auth.security_protocol}: "
                        "Kafka in the clear; use SASL_SSL or SSL")
    return problems


def refuse_insecure(settings: Settings, keyring: Keyring) -> None:
    """Exit when in production and :func:`insecure` finds anything."""
    if not production():
        return
    problems = insecure(settings, keyring)
    if problems:
        raise SystemExit("refusing to run in production: " + "; ".join(problems))
