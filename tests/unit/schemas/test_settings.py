from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from schemas.settings import Settings, WorkerSettings


def test_precedence_is_flags_then_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "clstream.toml"
    config.write_text('[topics]\ninput = "from-file"\noutput = "out-file"\n[workers]\ncount = 3\n')
    monkeypatch.setenv("CLSTREAM_TOPICS__OUTPUT", "out-env")
    monkeypatch.setenv("CLSTREAM_WORKERS__COUNT", "5")
    settings = Settings.load(config, {"workers": {"count": 7}})
    assert settings.topics.input == "from-file"
    assert settings.topics.output == "out-env"
    assert settings.workers.count == 7


def test_bootstrap_servers_accept_a_comma_separated_string():
    settings = Settings.load(overrides={"kafka": {"bootstrap_servers": "a:1, b:2"}})
    assert settings.kafka.bootstrap_servers == ("a:1", "b:2")


@pytest.mark.parametrize("value", ["a:1,b:2", '["a:1", "b:2"]'])
def test_bootstrap_servers_from_the_environment_as_a_list_or_json(value, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CLSTREAM_KAFKA__BOOTSTRAP_SERVERS", value)
    assert Settings.load().kafka.bootstrap_servers == ("a:1", "b:2")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kafka": {"bootstrap_servers": "no-port"}}, "is not host:port"),
        ({"topics": {"input": "x", "output": "x"}}, "three different topics"),
        ({"topics": {"input": "bad topic!"}}, "not a valid Kafka topic name"),
        ({"workers": {"count": 0}}, "greater than or equal to 1"),
        ({"kafka": {"security_protocol": "SASL_SSL"}}, "needs sasl_mechanism, sasl_username, sasl_password"),
        ({"model": {"encoder": "/does/not/exist"}}, "is not a directory"),
        ({"workers": {"bogus": 1}}, "Extra inputs are not permitted"),
        ({"workers": {"max_decompressed_batch_bytes": 1000}}, "between 1 MiB .* and 1 GiB"),
        (
            {"workers": {"producer_batch_bytes": 2_000_000}},
            "producer_batch_bytes\n.*less than or equal to 1000000",
        ),
    ],
)
def test_invalid_settings_say_what_is_wrong(overrides, message):
    with pytest.raises(ValidationError, match=message):
        Settings.load(overrides=overrides)


def test_missing_config_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist"):
        Settings.load(tmp_path / "nope.toml")


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.workers.count = 9  # type: ignore[misc]


def test_secrets_never_appear_in_log_fields_or_repr():
    settings = Settings.load(
        overrides={
            "kafka": {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "alice",
                "sasl_password": "hunter2-canary",
            }
        }
    )
    assert isinstance(settings.kafka.sasl_password, SecretStr)
    assert "hunter2-canary" not in str(settings.to_log_fields())
    assert "hunter2-canary" not in repr(settings)
    assert settings.kafka.client_config()["sasl_plain_password"] == "hunter2-canary"


def test_an_exactly_once_transaction_must_outlive_the_wait_for_it():
    with pytest.raises(
        ValidationError, match=r"transaction_timeout_ms \(20000\) must exceed produce_timeout_s \(30 s\)"
    ):
        WorkerSettings(delivery="exactly-once", transaction_timeout_ms=20_000)
    assert WorkerSettings(delivery="exactly-once", transaction_timeout_ms=20_000, produce_timeout_s=15)
    assert WorkerSettings(delivery="at-least-once", transaction_timeout_ms=20_000)  # no transactions


def test_a_gpu_reserved_for_every_actor_needs_a_model_that_may_use_it():
    with pytest.raises(ValidationError, match=r"gpu_policy 'always' .* model.device is 'cpu'"):
        Settings.load(overrides={"workers": {"gpu_policy": "always"}, "model": {"device": "cpu"}})
    assert Settings.load(overrides={"workers": {"gpu_policy": "always"}}).workers.gpu_policy == "always"
    with pytest.raises(ValidationError, match="gpu_policy"):
        Settings.load(overrides={"workers": {"gpu_policy": "sometimes"}})
    with pytest.raises(ValidationError, match=r"gpu_policy 'never' .* model.device is 'cuda'"):
        Settings.load(overrides={"workers": {"gpu_policy": "never"}, "model": {"device": "cuda"}})
