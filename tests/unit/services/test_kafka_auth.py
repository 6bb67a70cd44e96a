"""KafkaAuth: read from the environment, checked when read, and the password hidden."""

from __future__ import annotations

import pytest

from services.common.settings import KafkaAuth, Settings


def test_plaintext_by_default(monkeypatch):
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
                 "KAFKA_SASL_PASSWORD", "KAFKA_SASL_PASSWORD_FILE", "KAFKA_SSL_CAFILE",
                 "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"):
        monkeypatch.delenv(name, raising=False)
    auth = Settings.from_env().kafka_auth
    assert auth == KafkaAuth()
    assert auth.kafka_python() == {"security_protocol": "PLAINTEXT"}
    assert auth.aiokafka() == {"security_protocol": "PLAINTEXT"}
    assert auth.faust() is None


def test_scram_login_from_a_password_file(monkeypatch, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret-from-file\n")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "scram-sha-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "cashout")
    monkeypatch.delenv("KAFKA_SASL_PASSWORD", raising=False)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(secret))
    auth = KafkaAuth.from_env()
    assert auth.kafka_python() == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "cashout", "sasl_plain_password": "s3cret-from-file"}
    assert auth.env()["KAFKA_SASL_PASSWORD"] == "s3cret-from-file"  # for child processes
    assert "s3cret" not in repr(auth) and "s3cret" not in repr(Settings(kafka_auth=auth))
    credentials = auth.faust()
    assert (credentials.username, credentials.password) == ("cashout", "s3cret-from-file")


@pytest.mark.parametrize("fields, complaint", [
    ({"security_protocol": "SASL"}, "KAFKA_SECURITY_PROTOCOL"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "username": "u",
      "password": "p"}, "KAFKA_SASL_MECHANISM"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "username": "u"},
     "KAFKA_SASL_PASSWORD"),
    ({"security_protocol": "SSL", "cert_file": "client.pem"}, "KAFKA_SSL_KEYFILE"),
])
def test_an_incomplete_or_unknown_setting_stops_at_start(fields, complaint):
    with pytest.raises(SystemExit, match=complaint):
        KafkaAuth(**fields)
