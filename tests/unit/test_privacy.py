"""Personal data at ingress: keyed hashes, truncated addresses, named fields (pure)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from schemas import Touchpoint
from schemas.privacy import Redaction, id_hash, pseudonym, truncate_ip
from schemas.settings import Settings
from stream_processors.clickhouse.ddl import LEGACY, MODERN, retention
from stream_processors.privacy import PrivacyError, _conditions, _quote, check_id

T = datetime(2026, 5, 1, tzinfo=UTC)


def test_ids_hash_by_key_and_never_as_a_plain_digest() -> None:
    assert id_hash("c-1", "k") == id_hash("c-1", "k")
    assert id_hash("c-1", "k") != id_hash("c-1", "other key")
    assert id_hash("c-1", "k") != id_hash("c-2", "k")
    assert id_hash("c-1", "k") not in {hashlib.sha256(b"c-1").hexdigest()[:32],
                                       hashlib.md5(b"c-1").hexdigest()}
    assert len(id_hash("c-1", "k")) == 32


def test_hashed_fields_join_across_spellings_and_are_not_hashed_twice() -> None:
    once = pseudonym(" Ann@Example.COM ", "k")
    assert once.startswith("hmac:") and once == pseudonym("ann@example.com", "k")
    assert pseudonym(once, "k") == once


@pytest.mark.parametrize(("given", "expected"), [
    ("203.0.113.77", "203.0.113.0"), ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),
    ("::ffff:1.2.3.4", "::"), (" 10.1.2.3 ", "10.1.2.0"), ("not an address", None)])
def test_addresses_keep_their_network_only(given: str, expected: str | None) -> None:
    assert truncate_ip(given) == expected


def touchpoint(**context_and_properties: dict) -> Touchpoint:
    return Touchpoint(event_id="e", type="identify", occurred_at=T, customer_id="c-1",
                      **context_and_properties)


def test_the_default_redaction_hashes_contact_traits_and_truncates_the_address() -> None:
    redaction = Settings.from_env({}).redaction
    context = {"ip": "198.51.100.23", "userAgent": "UA", "traits": {"phone": "+33 6 12"}}
    properties = {"traits": {"email": "Ann@Example.com", "plan": "gold"}}
    tp = touchpoint(context=context, properties=properties)
    out = redaction.apply(tp)
    assert out.context == {"ip": "198.51.100.0", "userAgent": "UA",
                           "traits": {"phone": pseudonym("+33 6 12", redaction.key)}}
    assert out.properties == {"traits": {"email": pseudonym("ann@example.com", redaction.key),
                                         "plan": "gold"}}
    # The touchpoint as received is left alone (the caller's dicts are shared).
    assert context["ip"] == "198.51.100.23" and properties["traits"]["email"] == "Ann@Example.com"
    assert redaction.apply(out) == out  # twice (SDK, then worker): the same
    plain = touchpoint(context={"userAgent": "UA"})
    assert redaction.apply(plain) is plain


def test_named_fields_can_be_dropped_and_redaction_can_be_turned_off() -> None:
    redaction = Redaction.of("k", drop=["properties.traits.address", "context.ip"],
                             hash=["properties.traits.email"])
    tp = touchpoint(context={"ip": "1.2.3.4"}, properties={"traits": {
        "address": {"city": "Lyon"}, "email": {"nested": "object"}}})
    out = redaction.apply(tp)
    assert out.context == {} and out.properties == {"traits": {}}  # an object hashed: dropped
    off = Settings.from_env({"JOURNEY_PII_HASH_FIELDS": "none",
                             "JOURNEY_PII_TRUNCATE_IP_FIELDS": "None"})
    assert not off.redaction and off.redaction.apply(tp) is tp


def test_forget_refuses_ids_no_touchpoint_could_carry() -> None:
    for bad in ("", "   ", None, 7, "x" * 129):
        with pytest.raises(PrivacyError):
            check_id(bad)
    assert check_id("c-1") == "c-1"


def test_deletion_conditions_quote_ids_and_name_every_table() -> None:
    conditions = _conditions("o'brien\\", ["d-1"])
    assert _quote("o'brien\\") == "'o\\'brien\\\\'"
    assert set(conditions) == {"touchpoints", "customer_journeys", "journey_transitions",
                               "support_tickets", "journey_alerts", "dead_letters"}
    assert "anonymous_id IN ('d-1')" in conditions["touchpoints"]
    assert "merged_into = 'o\\'brien\\\\'" in conditions["customer_journeys"]
    assert "position(payload, '\"d-1\"') > 0" in conditions["dead_letters"]


def test_retention_is_a_ttl_on_modern_servers_and_a_deletion_on_18_16() -> None:
    days = {"touchpoints": 395, "dead_letters": 0}
    assert [statement for _, statement, _ in retention(MODERN, "db", days)] == [
        "ALTER TABLE db.touchpoints MODIFY TTL toDateTime(occurred_at) + INTERVAL 34128000 "
        "SECOND", "ALTER TABLE db.dead_letters REMOVE TTL"]
    assert retention(LEGACY, "db", days) == [(
        "touchpoints",
        "ALTER TABLE db.touchpoints DELETE WHERE occurred_at < now() - INTERVAL 34128000 SECOND",
        "occurred_at < now() - INTERVAL 34128000 SECOND")]
    # On a cluster: the replicated tables of every shard.
    assert retention(LEGACY, "db", days, "main")[0][1].startswith(
        "ALTER TABLE db.touchpoints_local ON CLUSTER main DELETE WHERE ")
