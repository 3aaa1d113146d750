import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.errors import MissingSecretError
from schemas.settings import SECRET_SETTINGS, KafkaSettings, Settings, secret_variable

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


def _sasl_ssl(**kafka: object) -> Settings:
    return Settings.load(
        overrides={
            "kafka": {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "alice",
                "sasl_password": CANARY,
                **kafka,
            }
        }
    )


def test_every_secret_setting_is_known_and_read_from_its_documented_variable():
    secret_fields = {
        (section, name)
        for section, field in Settings.model_fields.items()
        for name, inner in field.annotation.model_fields.items()  # type: ignore[union-attr]
        if "SecretStr" in str(inner.annotation)
    }
    assert set(SECRET_SETTINGS) == secret_fields
    assert [secret_variable(*setting) for setting in SECRET_SETTINGS] == [
        "CLSTREAM_KAFKA__SASL_PASSWORD",
        "CLSTREAM_KAFKA__SSL_PASSWORD",
    ]


def test_without_secrets_removes_every_secret_and_names_the_variables_to_fill_them_from():
    settings = _sasl_ssl(ssl_password="key-" + CANARY)
    stripped, variables = settings.without_secrets()
    assert variables == ("CLSTREAM_KAFKA__SASL_PASSWORD", "CLSTREAM_KAFKA__SSL_PASSWORD")
    assert (stripped.kafka.sasl_password, stripped.kafka.ssl_password) == (None, None)
    assert CANARY not in str(pickle.loads(pickle.dumps(stripped)).model_dump(mode="python"))
    assert CANARY.encode() not in pickle.dumps(stripped)
    # Everything else is as it was.
    assert stripped.kafka.sasl_username == "alice" and stripped.topics == settings.topics
    assert settings.secret_environment() == {
        "CLSTREAM_KAFKA__SASL_PASSWORD": CANARY,
        "CLSTREAM_KAFKA__SSL_PASSWORD": "key-" + CANARY,
    }


def test_settings_without_secrets_need_no_variables():
    stripped, variables = Settings.load().without_secrets()
    assert variables == () and stripped == Settings.load()
    assert stripped.with_secrets_from(variables, {}) == stripped


def test_with_secrets_from_fills_them_from_the_environment():
    stripped, variables = _sasl_ssl().without_secrets()
    filled = stripped.with_secrets_from(variables, {"CLSTREAM_KAFKA__SASL_PASSWORD": "from-the-node"})
    assert filled.kafka.client_config()["sasl_plain_password"] == "from-the-node"
    assert filled.kafka.ssl_password is None  # the driver had none: none is asked for


@pytest.mark.parametrize("environ", [{}, {"CLSTREAM_KAFKA__SASL_PASSWORD": ""}])
def test_a_secret_missing_from_the_environment_is_an_error_naming_its_variable(environ):
    stripped, variables = _sasl_ssl().without_secrets()
    with pytest.raises(MissingSecretError, match=r"^CLSTREAM_KAFKA__SASL_PASSWORD is not set") as info:
        stripped.with_secrets_from(variables, environ)
    assert "kafka.sasl_password" in str(info.value) and CANARY not in str(info.value)
