from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.settings import KafkaSettings, Settings

CANARY = "canary-secret-41c9"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_settings_pass_through_to_kafka_python(mechanism):
    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        sasl_username="alice",
        sasl_password=CANARY,
        ssl_cafile=Path("/etc/ca.pem"),
    )
    config = kafka.client_config()
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == mechanism
    assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("alice", CANARY)
    assert config["ssl_cafile"] == "/etc/ca.pem"


def test_ssl_settings_pass_through_to_kafka_python():
    kafka = KafkaSettings(
        security_protocol="SSL",
        ssl_cafile=Path("/ca.pem"),
        ssl_certfile=Path("/client.pem"),
        ssl_keyfile=Path("/client.key"),
        ssl_password=CANARY,
    )
    config = kafka.client_config()
    assert {k: config[k] for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")} == {
        "ssl_cafile": "/ca.pem",
        "ssl_certfile": "/client.pem",
        "ssl_keyfile": "/client.key",
        "ssl_password": CANARY,
    }
    assert "sasl_mechanism" not in config


def test_secrets_are_masked_in_every_view_that_is_logged_or_printed(monkeypatch):
    monkeypatch.setenv("CLSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("CLSTREAM_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("CLSTREAM_KAFKA__SASL_USERNAME", "alice")
    monkeypatch.setenv("CLSTREAM_KAFKA__SASL_PASSWORD", CANARY)
    settings = Settings.load()
    assert settings.kafka.client_config()["sasl_plain_password"] == CANARY
    for view in (repr(settings), str(settings.to_log_fields()), settings.model_dump_json()):
        assert CANARY not in view


def test_sasl_without_credentials_is_refused_with_what_is_missing():
    with pytest.raises(ValidationError, match="SASL_PLAINTEXT needs sasl_mechanism, sasl_password"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="alice")
    with pytest.raises(ValidationError, match="sasl_mechanism"):
        KafkaSettings(sasl_mechanism="GSSAPI")  # type: ignore[arg-type]
