"""COMMISSION_ENV=production refuses the defaults that are public or in the clear."""

from __future__ import annotations

import base64

import pytest

from services.common.auth import DEV_KEYS, Keyring
from services.common.production import EXAMPLES, insecure, refuse_insecure
from services.common.settings import KafkaAuth, Settings

TLS = Settings(kafka_auth=KafkaAuth(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                                    username="u", password="p"))
OWN = Keyring.parse("gw-7:gateway:a-secret-nobody-has-seen-0001,"
                    "pay-7:payments:ed25519-public:" + base64.b64encode(b"k" * 32).decode())


def test_own_keys_over_tls_pass():
    assert insecure(TLS, OWN) == []


def test_the_development_keys_are_refused():
    problems = insecure(TLS, Keyring.parse(DEV_KEYS))
    assert len(problems) == len(Keyring.parse(DEV_KEYS).keys)
    assert all("published in this repository" in p for p in problems)


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.example")), ids=lambda p: p.name)
def test_the_example_key_files_are_refused(example):
    keyring = Keyring.parse(example.read_text())
    assert len(insecure(TLS, keyring)) == len(keyring.keys)


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_kafka_in_the_clear_is_refused(protocol):
    sasl = {"sasl_mechanism": "SCRAM-SHA-512", "username": "u", "password": "p"}
    settings = Settings(kafka_auth=KafkaAuth(security_protocol=protocol,
                                             **(sasl if protocol.startswith("SASL") else {})))
    assert any(protocol in p for p in insecure(settings, OWN))


def test_only_production_refuses(monkeypatch):
    monkeypatch.delenv("COMMISSION_ENV", raising=False)
    refuse_insecure(Settings(), Keyring.parse(DEV_KEYS))  # development: runs
    monkeypatch.setenv("COMMISSION_ENV", "production")
    with pytest.raises(SystemExit, match="refusing to run in production"):
        refuse_insecure(Settings(), Keyring.parse(DEV_KEYS))


def test_production_refuses_the_demo_passwords_and_reads_seed_accounts_from_a_file(
        monkeypatch, tmp_path):
    from services.api.accounts import Seed, seeds_from_env
    from services.api.identity import Role
    accounts = tmp_path / "accounts"
    accounts.write_text("# one per line\nalice:a-long-own-password:seller+funder\n"
                        "bob:demo-bob\n")
    monkeypatch.delenv("COMMISSION_ACCOUNTS", raising=False)
    monkeypatch.setenv("COMMISSION_ACCOUNTS_FILE", str(accounts))
    monkeypatch.setenv("COMMISSION_ENV", "production")
    with pytest.raises(SystemExit, match=r"\['bob'\] have their published demo password"):
        seeds_from_env()
    accounts.write_text("alice:a-long-own-password:seller+funder\nbob:another-own-password\n")
    assert seeds_from_env() == [Seed("alice", "a-long-own-password", (Role.SELLER, Role.FUNDER)),
                                Seed("bob", "another-own-password")]
    # production needs no list: accounts sign up (or come from the identity provider),
    # and the demo accounts are never seeded there
    monkeypatch.delenv("COMMISSION_ACCOUNTS_FILE")
    assert seeds_from_env() == []
    monkeypatch.delenv("COMMISSION_ENV")
    assert {s.account_id for s in seeds_from_env()} == {
        "alice", "bob", "carol", "dave", "seller", "funder", "reviewer"}
