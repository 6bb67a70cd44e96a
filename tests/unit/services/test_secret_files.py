"""Logins read from mounted files: the Kafka user and password, the Redis password
(production keeps every secret out of environment values: deploy/k8s)."""

from __future__ import annotations

import pytest

from services.common.settings import KafkaAuth, redis_url_from_env


def test_kafka_user_and_password_from_files(monkeypatch, tmp_path):
    (tmp_path / "username").write_text("circulation\n")
    (tmp_path / "password").write_text("pw-from-file\n")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    for name in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_SASL_USERNAME_FILE", str(tmp_path / "username"))
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "password"))
    auth = KafkaAuth.from_env()
    assert (auth.username, auth.password) == ("circulation", "pw-from-file")


def test_sasl_without_a_login_refuses(monkeypatch):
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    for name in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SASL_USERNAME_FILE",
                 "KAFKA_SASL_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit, match="SASL needs"):
        KafkaAuth.from_env()


def test_plaintext_reads_no_login_files(monkeypatch):
    """The dev overlay mounts no Kafka login: a missing file must not matter."""
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_USERNAME_FILE", "/nonexistent/username")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", "/nonexistent/password")
    assert KafkaAuth.from_env().username is None


def test_redis_password_from_a_file(monkeypatch, tmp_path):
    (tmp_path / "password").write_text("p@ss:w/rd\n")
    monkeypatch.setenv("REDIS_URL", "rediss://commission-api@redis:6379/0?ssl_ca_certs=/ca.crt")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(tmp_path / "password"))
    url = redis_url_from_env()
    assert url == "rediss://commission-api:p%40ss%3Aw%2Frd@redis:6379/0?ssl_ca_certs=/ca.crt"
    from redis.connection import parse_url

    parsed = parse_url(url)
    assert (parsed["username"], parsed["password"]) == ("commission-api", "p@ss:w/rd")
    assert parsed["ssl_ca_certs"] == "/ca.crt"


def test_redis_url_unchanged_without_a_password_file(monkeypatch):
    monkeypatch.delenv("REDIS_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    assert redis_url_from_env() == "redis://redis:6379/0"
    monkeypatch.delenv("REDIS_URL")
    assert redis_url_from_env() == "redis://127.0.0.1:6379/0"


def test_a_password_in_both_places_refuses(monkeypatch, tmp_path):
    (tmp_path / "password").write_text("x")
    monkeypatch.setenv("REDIS_URL", "redis://u:inline@redis:6379/0")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(tmp_path / "password"))
    with pytest.raises(SystemExit, match="file only"):
        redis_url_from_env()
