from schemas.dlq import DlqHeader
from workers.kafka_io import producible
from workers.records import OutboundRecord


def test_records_kafka_python_accepts_are_unchanged():
    record = OutboundRecord("dlq", None, b"v", [("h", b"\x00")])
    assert producible(record) is record
    assert producible(OutboundRecord("dlq", b"k", None)) == OutboundRecord("dlq", b"k", None)


def test_null_key_with_null_value_and_null_header_values_are_replaced_and_named():
    record = OutboundRecord("dlq", None, None, [("a", None), ("b", b"x"), ("c", None)])
    assert producible(record) == OutboundRecord(
        "dlq",
        b"",
        None,
        [("a", b""), ("b", b"x"), ("c", b""), (DlqHeader.SOURCE_NULLS.value, b"key,header:0,header:2")],
    )
