"""The account store on a real Redis: sign-up, login, password change (other sessions
end), erasure (nothing of the name is left under the store's or the read model's
keys, the name is free again), a provider's profile, and seeding by two replicas at
once. Hashing uses small argon2id parameters here (the production ones are in
services/api/passwords.py; tests/unit covers them)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from services.api.accounts import Seed, seed
from services.api.accountstore import AccountErased, AccountStore
from services.api.errors import Problem
from services.api.identity import Identity, Role
from services.api.passwords import Passwords
from services.api.sessions import Sessions
from services.api.throttle import LoginThrottle
from services.common.auth import Keyring

KEYS = Keyring.parse("s1:session:session-secret-0123456789")
PASSWORD = "correct horse battery"


def store_on(client: aioredis.Redis, prefix: str) -> AccountStore:
    return AccountStore(client, f"acct:{prefix}", Sessions(KEYS, client, f"rm:{prefix}"),
                        LoginThrottle(client, f"rm:{prefix}"),
                        Passwords(time_cost=1, memory_cost=1024, workers=1))


def run(stack, test) -> None:
    async def main():
        client = aioredis.from_url(stack.redis_url)
        prefix = f"t-acct-{uuid.uuid4().hex[:8]}."
        store = store_on(client, prefix)
        try:
            await test(store, client, prefix)
        finally:
            store.close()
            await client.aclose()

    asyncio.run(main())


async def names_in_redis(client: aioredis.Redis, prefix: str, *names: str) -> list[str]:
    """Every key under the store's and the read model's prefixes whose name or value
    holds one of ``names``."""
    found = []
    for pattern in (f"acct:{prefix}*", f"rm:{prefix}*"):
        async for key in client.scan_iter(pattern):
            kind = (await client.type(key)).decode()
            if kind == "hash":
                values = [b"".join(kv) for kv in (await client.hgetall(key)).items()]
            elif kind == "zset":
                values = await client.zrange(key, 0, -1)
            else:
                values = [await client.get(key) or b""]
            blob = key + b"".join(values)
            found += [key.decode() for n in names if n.encode() in blob.lower()]
    return found


def test_sign_up_login_and_a_password_change_that_ends_the_other_sessions(stack):
    async def test(store: AccountStore, client, prefix):
        me = await store.create(login="  Zoe.Visitor ", password=PASSWORD,
                                display_name="Zoë V.", roles=[Role.SELLER])
        assert me.account_id.startswith("u-") and len(me.account_id) == 22
        assert (me.display_name, me.roles, me.source, me.verified) == (
            "Zoë V.", frozenset({Role.SELLER}), "local", False)
        with pytest.raises(Problem) as taken:  # names compare in NFKC lower case
            await store.create(login="zoe.visitor", password=PASSWORD, display_name="x")
        assert taken.value.response.status == 409
        for login, password, name in (("zo", PASSWORD, "x"), ("u-abcdef", PASSWORD, "x"),
                                      ("zed", "short", "x"), ("zed", PASSWORD, "\x00")):
            with pytest.raises(Problem) as bad:
                await store.create(login=login, password=password, display_name=name)
            assert bad.value.response.status == 422
        assert await store.login("zoe.visitor", "wrong password!", "1.2.3.4") is None
        assert await store.login("nobody", PASSWORD, "1.2.3.4") is None
        laptop = await store.login("ZOE.visitor", PASSWORD, "1.2.3.4")
        phone = await store.login("zoe.visitor", PASSWORD, "5.6.7.8")
        assert laptop.account == phone.account == me.account_id
        assert await store.identify(phone.token) == me
        assert (await store.get(me.account_id)).display_name == "Zoë V."

        with pytest.raises(Problem) as wrong:
            await store.change_password(laptop, "not it at all", "a new long password", "x")
        assert wrong.value.response.status == 403
        await store.change_password(laptop, PASSWORD, "a new long password", "1.2.3.4")
        assert await store.identify(laptop.token) == me  # the session that changed it
        assert await store.identify(phone.token) is None  # every other one ended
        assert await store.login("zoe.visitor", PASSWORD, "1.2.3.4") is None
        assert await store.login("zoe.visitor", "a new long password", "1.2.3.4")
        await store.end_session(laptop)  # logout
        assert await store.identify(laptop.token) is None

    run(stack, test)


def test_erasure_leaves_no_name_ends_every_session_and_frees_the_login(stack):
    async def test(store: AccountStore, client, prefix):
        me = await store.create(login="erin.leaves", password=PASSWORD,
                                display_name="Erin Leaves")
        session = await store.login("erin.leaves", PASSWORD, "1.2.3.4")
        # what the read model holds of her: her opaque id only
        await client.zadd(f"rm:{prefix}shared:{me.account_id}", {"seller~lamp-00001": 1})
        assert await names_in_redis(client, prefix, "erin")  # before: in the store
        await store.erase(me.account_id)
        assert await names_in_redis(client, prefix, "erin") == []
        assert await store.identify(session.token) is None
        assert await store.get(me.account_id) is None and await store.erased(me.account_id)
        assert await store.login("erin.leaves", PASSWORD, "1.2.3.4") is None
        assert await store.start_session(me.account_id) is None
        again = await store.create(login="erin.leaves", password=PASSWORD, display_name="E")
        assert again.account_id != me.account_id  # nothing of the erased account passes

    run(stack, test)


def test_a_provider_account_is_created_once_and_updated_at_each_sign_in(stack):
    async def test(store: AccountStore, client, prefix):
        first = Identity("o-3f2a", "Pat", frozenset({Role.FUNDER}), 1_000, True,
                         "https://id.example")
        assert await store.upsert_external(first) == first
        later = Identity("o-3f2a", "Pat Doe", frozenset(), 9_999, False, "https://id.example")
        updated = await store.upsert_external(later)
        assert (updated.display_name, updated.roles, updated.created_ms, updated.verified) == (
            "Pat Doe", frozenset(), 1_000, False)
        session = await store.start_session("o-3f2a")
        assert await store.identify(session.token) == updated
        assert await store.login("o-3f2a", "", "1.2.3.4") is None  # no password to log in
        await store.erase("o-3f2a")
        assert await store.identify(session.token) is None
        with pytest.raises(AccountErased):
            await store.upsert_external(later)

    run(stack, test)


def test_two_replicas_seeding_at_once_create_each_account_once_and_never_reset_it(stack):
    async def test(store: AccountStore, client, prefix):
        other = store_on(client, prefix)
        # demo-bob is shorter than a sign-up may choose: the operator's seeds may
        seeds = [Seed("seller", "demo-seller", (Role.SELLER,)), Seed("alice", "demo-alice"),
                 Seed("bob", "demo-bob")]
        try:
            made = await asyncio.gather(seed(store, seeds), seed(other, seeds))
            assert sum(made) == 3
            assert await store.login("bob", "demo-bob", "1.2.3.4")
            alice = await store.login("alice", "demo-alice", "1.2.3.4")
            await store.change_password(alice, "demo-alice", "alice's own password", "x")
            assert await seed(other, seeds) == 0
            assert await store.login("alice", "demo-alice", "1.2.3.4") is None
            seller = await store.get("seller")
            assert (seller.roles, seller.verified, seller.display_name) == (
                frozenset({Role.SELLER}), True, "seller")
        finally:
            other.close()

    run(stack, test)
