"""The keys a stage holds: those of the scopes it uses (deploy/keys.py, KEYS_USED)
and no others. ``run_service`` builds every stage with them."""

from __future__ import annotations

import os

from deploy.keys import KEYS_USED
from services.common.auth import Keyring
from services.common.settings import production


def stage_keys(name: str) -> Keyring:
    """The keys of the scopes stage ``name`` uses and no others; a stage that uses none
    reads none. In production a stage given keys it does not use refuses to start:
    whoever reads its files must not be able to sign for another part of the engine
    (the manifests give each Deployment its own Secret; tests/unit/deploy/test_keys.py
    checks them). A stage missing from the table is an error: add it there first."""
    scopes = KEYS_USED[name]
    refuse = production()
    if not scopes:
        given = [v for v in ("COMMISSION_KEYS", "COMMISSION_KEYS_FILE") if os.environ.get(v)]
        if given and refuse:
            raise SystemExit(f"{name} uses no keys, but {' and '.join(given)} is set: "
                             f"give it none (deploy/keys.py)")
        return Keyring({})
    keyring = Keyring.from_env()
    extra = keyring.scopes() - scopes
    if extra and refuse:
        raise SystemExit(f"{name} holds keys of scopes {sorted(extra)} it does not use: "
                         f"give it only {sorted(scopes)} (deploy/keys.py)")
    return Keyring({k: key for k, key in keyring.keys.items() if key.scope in scopes})
