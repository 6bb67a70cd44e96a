"""Accounts without infrastructure: login names and display names a store accepts,
argon2id hashes (the production parameters), roles on actions, and the roles a
visitor may choose at sign-up. The store itself on a real Redis:
tests/integration/test_accountstore.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.api.accountpages import chosen_roles
from services.api.accountstore import (
    display_name_problem,
    login_problem,
    new_account_id,
    normal_login,
    parse_roles,
    roles_text,
)
from services.api.errors import Problem
from services.api.identity import Identity, Role
from services.api.passwords import MAX_PASSWORD, Passwords, password_problem
from services.api.roles import require, signup_roles
from services.api.throttle import digest

pytestmark = pytest.mark.unit


def who(*roles: Role, account: str = "u-0123456789abcdef0123") -> Identity:
    return Identity(account, "Someone", frozenset(roles), 0, False, "local")


def refusal(call) -> dict:
    with pytest.raises(Problem) as refused:
        call()
    assert refused.value.response.status == 403
    return json.loads(refused.value.response.body)


def test_issuing_needs_the_seller_role():
    require(who(Role.SELLER), Role.SELLER)
    body = refusal(lambda: require(who(Role.FUNDER, Role.REVIEWER), Role.SELLER))
    assert body == {"error": "missing_role", "detail": "this needs the seller role",
                    "required_roles": ["seller"]}


def test_attaching_needs_the_funder_role_or_being_the_certificates_seller():
    mine = "u-0123456789abcdef0123~lamp-00001"
    require(who(Role.FUNDER), Role.FUNDER, or_seller_of="seller~lamp-00001")
    require(who(), Role.FUNDER, or_seller_of=mine)  # its own certificate
    body = refusal(lambda: require(who(), Role.FUNDER, or_seller_of="seller~lamp-00001"))
    assert body["error"] == "missing_role" and body["required_roles"] == ["funder"]
    # an id that names no seller, or a seller whose name only starts like mine
    refusal(lambda: require(who(), Role.FUNDER, or_seller_of="lamp-00001"))
    refusal(lambda: require(who(account="u-01"), Role.FUNDER, or_seller_of=mine))


def test_reviewing_needs_the_reviewer_role_or_being_the_seller():
    require(who(Role.REVIEWER), Role.REVIEWER, or_seller_of="seller~lamp-00001")
    require(who(account="seller"), Role.REVIEWER, or_seller_of="seller~lamp-00001")
    refusal(lambda: require(who(Role.SELLER), Role.REVIEWER, or_seller_of="seller~lamp-00001"))


def test_sign_up_offers_seller_and_funder_outside_production_and_nothing_in_it(monkeypatch):
    monkeypatch.delenv("API_SIGNUP_ROLES", raising=False)
    monkeypatch.delenv("COMMISSION_ENV", raising=False)
    assert signup_roles() == {Role.SELLER, Role.FUNDER}
    assert chosen_roles(["seller"]) == {Role.SELLER}
    for asked in (["reviewer"], ["admin"], ["seller", "reviewer"]):
        body = refusal(lambda asked=asked: chosen_roles(asked))
        assert body["error"] == "role_not_offered"
    monkeypatch.setenv("COMMISSION_ENV", "production")
    assert signup_roles() == frozenset()
    refusal(lambda: chosen_roles(["seller"]))
    monkeypatch.setenv("API_SIGNUP_ROLES", "seller")
    assert signup_roles() == {Role.SELLER}
    monkeypatch.setenv("API_SIGNUP_ROLES", "seller,reviewer")
    with pytest.raises(SystemExit, match="reviewer is granted by an operator"):
        signup_roles()


@pytest.mark.parametrize("login", ["alice", "zoe.visitor", "a_1-b", "x" * 32, "007"])
def test_login_names_accepted(login):
    assert login_problem(login) is None


@pytest.mark.parametrize("login", ["ab", "x" * 33, "-alice", ".alice", "al ice", "al/ice",
                                   "alice~x", "u-123abc", "o-provider", "", "álice"])
def test_login_names_refused(login):
    assert login_problem(login)


def test_a_login_name_is_compared_in_one_form():
    assert normal_login("  Alice ") == "alice"
    assert normal_login("ＡＬＩＣＥ") == "alice"  # full-width letters (NFKC)


def test_display_names():
    assert display_name_problem("Zoë Visitor") is None
    for bad in ("", "x" * 65, "evil\u202ename", "tab\there", "new\nline"):
        assert display_name_problem(bad)


def test_opaque_ids_say_nothing_and_do_not_repeat():
    ids = {new_account_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("u-") and len(i) == 22 and login_problem(i) for i in ids)


def test_roles_round_trip_and_unknown_ones_are_dropped():
    assert parse_roles(roles_text([Role.SELLER, Role.FUNDER])) == {Role.SELLER, Role.FUNDER}
    assert parse_roles("seller,admin,") == {Role.SELLER}


def test_failure_counters_carry_no_login_name():
    assert "alice" not in digest("alice") and digest("alice") != digest("alice2")


def test_argon2id_hashes_with_the_stated_parameters():
    passwords = Passwords()

    async def run():
        stored = await passwords.hash("correct horse battery")
        assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert await passwords.verify(stored, "correct horse battery")
        assert not await passwords.verify(stored, "correct horse batterY")
        assert not await passwords.verify(None, "correct horse battery")  # unknown login
        assert not await passwords.verify("not a hash", "x")
        assert not await passwords.verify(stored, "x" * (MAX_PASSWORD + 1))
        assert not passwords.needs_rehash(stored)

    try:
        asyncio.run(run())
    finally:
        passwords.close()
    assert password_problem("short") and password_problem("x" * (MAX_PASSWORD + 1))
    assert password_problem("ten chars!") is None
