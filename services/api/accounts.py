"""Seed accounts, and the operator's command for accounts.

Accounts live in the account store (services/api/accountstore.py). At start the API
seeds it, creating only accounts that do not exist yet (a password changed since is
never reset):

- ``COMMISSION_ACCOUNTS`` ("id:password[:role+role],...") or the file named by
  ``COMMISSION_ACCOUNTS_FILE`` (one entry a line: a mounted secret), optional;
- else, outside production, the demo accounts below (password ``demo-<id>``) for
  `make run` and the tests. Production never seeds them, and refuses a seed list
  that holds a demo password.

The operator's command (``REDIS_URL``, ``COMMISSION_TOPIC_PREFIX`` as the API's)::

    python -m services.api.accounts grant <login> seller|funder|reviewer
    python -m services.api.accounts revoke <login> <role>
    python -m services.api.accounts show <login>
    python -m services.api.accounts erase <login>    # as the account's own erasure
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from services.api.accountstore import AccountStore
from services.api.errors import Problem
from services.api.identity import Role
from services.common.settings import production, redis_url_from_env

# id -> roles; every one's password is "demo-<id>", its display name its id
DEMO_ACCOUNTS: dict[str, tuple[Role, ...]] = {
    "alice": (), "bob": (), "carol": (), "dave": (),
    "seller": (Role.SELLER,), "funder": (Role.FUNDER,), "reviewer": (Role.REVIEWER,),
}


@dataclass(frozen=True)
class Seed:
    account_id: str
    password: str
    roles: tuple[Role, ...] = ()


def seeds_from_env() -> list[Seed]:
    """The seed list from the environment; the demo accounts outside production."""
    path = os.environ.get("COMMISSION_ACCOUNTS_FILE")
    text = Path(path).read_text() if path else os.environ.get("COMMISSION_ACCOUNTS")
    if text is None:
        if production():
            return []
        return [Seed(a, f"demo-{a}", roles) for a, roles in DEMO_ACCOUNTS.items()]
    seeds = []
    for entry in (e.strip() for e in text.replace("\n", ",").split(",")):
        if not entry or entry.startswith("#"):
            continue
        account_id, _, rest = entry.partition(":")
        password, _, roles = rest.partition(":")
        seeds.append(Seed(account_id, password,
                          tuple(Role(r) for r in roles.split("+") if r)))
    demo = sorted(s.account_id for s in seeds if s.password == f"demo-{s.account_id}")
    if demo and production():
        raise SystemExit(f"refusing to run in production: accounts {demo} have their "
                         "published demo password")
    return seeds


async def seed(store: AccountStore, seeds: list[Seed]) -> int:
    """Creates the seed accounts that do not exist yet; how many it created."""
    created = 0
    for s in seeds:
        if await store.account_of(s.account_id) is not None:
            continue
        try:
            await store.create(login=s.account_id, password=s.password,
                               display_name=s.account_id, roles=s.roles,
                               account_id=s.account_id, verified=True)
            created += 1
        except Problem as exc:
            if exc.response.status != 409:
                raise
            # another replica seeded it first
    return created


def _store(client: aioredis.Redis) -> AccountStore:
    return AccountStore(client, f"acct:{os.environ.get('COMMISSION_TOPIC_PREFIX', '')}",
                        None, None)


async def command(args: list[str], client: aioredis.Redis) -> str:
    """Runs one operator command; what it did, as one line of JSON."""
    if len(args) < 2 or args[0] not in ("grant", "revoke", "show", "erase"):
        raise SystemExit(__doc__.split("::", 1)[1])
    store = _store(client)
    try:
        action, login = args[0], args[1]
        account_id = await store.account_of(login)
        identity = await store.get(account_id) if account_id else None
        if identity is None:
            raise SystemExit(f"no account with the login name {login!r}")
        if action == "erase":
            await store.erase(account_id)
            return json.dumps({"erased": account_id})
        if action in ("grant", "revoke"):
            role = Role(args[2]) if len(args) > 2 and args[2] in Role._value2member_map_ \
                else None
            if role is None:
                raise SystemExit(f"a role is one of {[str(r) for r in Role]}")
            roles = identity.roles | {role} if action == "grant" else identity.roles - {role}
            await store.set_roles(account_id, roles)
        return json.dumps(await store.profile(account_id))
    finally:
        store.close()


def main() -> None:
    async def run() -> str:
        client = aioredis.from_url(redis_url_from_env())
        try:
            return await command(sys.argv[1:], client)
        finally:
            await client.aclose()

    print(asyncio.run(run()))


if __name__ == "__main__":
    main()
