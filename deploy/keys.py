"""Which keys each deployed process holds: the one table that the Kubernetes
manifests, the compose file, the example key files and the runbook follow, and that
``services.common.service.run_service`` applies when a stage starts.

A keys file holds one key a line (services/common/auth.py parses it):

- ``id:scope:secret``: an HMAC-SHA256 secret of scope ``gateway`` (user commands,
  signed by the API, verified by the sequencer), ``system`` (the withdrawal timer's
  commands, verified by the sequencer), ``session`` (the API's session tokens) or
  ``draw`` (the sequencer's secret for random amounts; it signs nothing), ``fraud``
  (the fraud stage's flag_commission, verified by the sequencer);
- ``id:payments:ed25519-public:<base64 of the raw 32-byte key>``: the payment
  system's PUBLIC key. Its private key stays with the payment system; nothing here
  deploys it.

Each process holds the scopes below and nothing else: whoever reads the files of one
process (the internet-facing API above all) can forge only what that process may say.
``tests/unit/deploy/test_keys.py`` fails if a Deployment or a compose service mounts
a key Secret or file it does not use, or an example file holds a scope its service
does not use.
"""

from __future__ import annotations

from pathlib import Path

# scope -> what it is for (the runbook's rotation section cites this table)
SCOPES: dict[str, str] = {
    "gateway": "signs user commands (API) / verifies them (sequencer)",
    "system": "signs the timer's check_expiry and release_hold (withdrawal) / verifies them",
    "payments": "the payment system's Ed25519 public keys: verify what only it may say",
    "draw": "the sequencer's secret for random amounts",
    "session": "signs the API's session tokens",
    "fraud": "signs the fraud stage's flag_commission / verifies it",
}

# process (Deployment, compose service) -> the key scopes it holds
KEYS_USED: dict[str, frozenset[str]] = {
    "api": frozenset({"gateway", "session"}),
    "circulation": frozenset({"gateway", "system", "payments", "draw", "fraud"}),
    "captures": frozenset({"payments"}),
    "withdrawal": frozenset({"system"}),
    "allocation": frozenset(),
    "cashout": frozenset(),
    "netting": frozenset(),
    "fraud": frozenset({"fraud"}),
    "readmodel": frozenset(),
    "audit": frozenset(),
}

# scopes of which a process holds only public keys (the engine never holds the
# payment system's private key)
PUBLIC_ONLY = frozenset({"payments"})

# where a process finds its keys file: Kubernetes mounts the Secret
# commission-keys-<process> there, compose the secret commission_keys_<process>
KEYS_FILE = "/run/secrets/commission/keys"
# the example key files, one per process that holds keys (never real secrets)
EXAMPLES = Path(__file__).resolve().parent / "keys"


def holders() -> list[str]:
    """The processes that hold any key, in the table's order."""
    return [name for name, scopes in KEYS_USED.items() if scopes]


def secret_name(process: str) -> str:
    """The Kubernetes Secret that holds ``process``'s keys file (key ``keys``)."""
    return f"commission-keys-{process}"


def compose_secret(process: str) -> str:
    """The compose secret that holds ``process``'s keys file."""
    return f"commission_keys_{process}"


def example_file(process: str) -> Path:
    return EXAMPLES / f"{process}.keys.example"


def scopes_in(text: str) -> list[tuple[str, str, str]]:
    """``(key id, scope, kind)`` of each key line of a keys file; kind is ``hmac`` or
    the Ed25519 kind the line names. Reads the layout only: auth.py checks the keys."""
    out = []
    for raw in text.replace("\n", ",").split(","):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        key_id, scope, rest = entry.split(":", 2)
        kind = rest.split(":", 1)[0] if rest.startswith("ed25519-") else "hmac"
        out.append((key_id, scope, kind))
    return out
