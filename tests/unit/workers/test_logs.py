import logging

from workers.logs import REDACTED, install_redaction, redact_message, redact_text, redact_value

CANARY = "canary-pw-8d1f"


def test_kafka_python_config_dicts_lose_their_secrets():
    config = {
        "bootstrap_servers": ["127.0.0.1:9092"],
        "sasl_plain_username": "alice",
        "sasl_plain_password": CANARY,
        "ssl_password": CANARY,
        "sasl_oauth_token_provider": CANARY,
        "request_timeout_ms": 30000,
    }
    assert redact_value(config) == {
        "bootstrap_servers": ["127.0.0.1:9092"],
        "sasl_plain_username": "alice",
        "sasl_plain_password": REDACTED,
        "ssl_password": REDACTED,
        "sasl_oauth_token_provider": REDACTED,
        "request_timeout_ms": 30000,
    }


def test_payload_bytes_become_their_length():
    assert redact_value(b"a tweet") == "<7 bytes>"
    assert redact_value([("h", b"\x00\x01")]) == [("h", "<2 bytes>")]
    assert redact_value("text stays") == "text stays"


def test_password_pairs_in_free_text_are_redacted():
    text = f"connecting with password={CANARY}, {{'sasl_plain_password': '{CANARY}'}} token: \"{CANARY}\""
    redacted = redact_text(text)
    assert CANARY not in redacted
    assert redacted == ("connecting with password=***, {'sasl_plain_password': ***} token: ***")


def test_records_of_any_logger_are_redacted_before_any_handler_sees_them(caplog):
    install_redaction()
    # On kafka's logger itself: configure_logging (run by earlier tests) holds it at WARNING.
    caplog.set_level(logging.DEBUG, logger="kafka")
    logger = logging.getLogger("kafka.producer.kafka")
    logger.debug("Sending (key=%r value=%r headers=%r) to %s", b"k", f"text {CANARY}".encode(), [], "t-0")
    logger.debug("Starting KafkaAdminClient with configuration: %s", {"sasl_plain_password": CANARY})
    assert CANARY not in caplog.text
    assert "Sending (key='<1 bytes>' value='<19 bytes>' headers=[]) to t-0" in caplog.text
    assert "{'sasl_plain_password': ***}" in caplog.text


def test_bytes_inside_logged_objects_are_cut_from_the_message(caplog):
    class FetchResponse:
        def __repr__(self) -> str:
            records, more = ("x" + CANARY).encode(), b"it's"
            return f"FetchResponse(topic='t', records={records!r}, more={more!r})"

    install_redaction()
    caplog.set_level(logging.DEBUG, logger="kafka")
    logging.getLogger("kafka.protocol.parser").debug("Received response %s", FetchResponse())
    assert CANARY not in caplog.text
    assert (
        "Received response FetchResponse(topic='t', records=<15 chars of bytes>, more=<4 chars of bytes>)"
        in caplog.text
    )
    assert redact_message("no bytes, b'' is empty") == "no bytes, <0 chars of bytes> is empty"


def test_logging_after_the_configured_stream_was_closed_writes_to_the_current_one(monkeypatch, capsys):
    import io

    import structlog

    from workers.logs import configure_logging

    old = io.StringIO()
    monkeypatch.setattr("sys.stderr", old)
    configure_logging("INFO", "json")
    old.close()  # what pytest does to a test's capture stream when the test ends
    monkeypatch.undo()
    structlog.get_logger("clstream.test").warning("after the swap", records=2)
    assert '"event": "after the swap"' in capsys.readouterr().err
