from pathlib import Path

import pytest

from schemas.settings import ConfigError, Settings


def test_defaults_target_the_local_stack() -> None:
    s = Settings.from_env({})
    assert s.bootstrap_servers == ["127.0.0.1:9092"]
    assert s.clickhouse_host_port == ("127.0.0.1", 9000)
    assert s.clickhouse_database == "journey"
    assert s.touchpoints_topic == "journey.touchpoints"


def test_environment_is_parsed_by_type() -> None:
    s = Settings.from_env({"JOURNEY_TOPIC_PARTITIONS": "12", "JOURNEY_SINK_FLUSH_SECONDS": "0.5",
                           "JOURNEY_DATA_DIR": "/var/lib/journey",
                           "JOURNEY_BROKER_URL": "k1:9092, k2:9092"})
    assert s.topic_partitions == 12
    assert s.sink_flush_seconds == 0.5
    assert s.data_dir == Path("/var/lib/journey")
    assert s.bootstrap_servers == ["k1:9092", "k2:9092"]


@pytest.mark.parametrize(("env", "message"), [
    ({"JOURNEY_TOPIC_PARTITIONS": "many"}, "JOURNEY_TOPIC_PARTITIONS='many' is not a valid int"),
    ({"JOURNEY_TOPIC_PARTITIONS": "0"}, "at least 1"),
    ({"JOURNEY_STORE": "redis://"}, "use memory:// or rocksdb://"),
    ({"JOURNEY_ROUTER_MAX_AHEAD": "-1"}, "JOURNEY_ROUTER_MAX_AHEAD must be 0"),
    ({"JOURNEY_CX_WINDOWS_PER_BATCH": "-1"}, "JOURNEY_CX_WINDOWS_PER_BATCH must be 0"),
    ({"JOURNEY_COMPRESS_UP_TO_BYTES": "-1"}, "JOURNEY_COMPRESS_UP_TO_BYTES must be 0"),
    ({"JOURNEY_CLICKHOUSE_URL": "http://h:8123"}, "clickhouse://user:password@host"),
    ({"JOURNEY_MERGED_RETENTION_DAYS": "0"}, "JOURNEY_MERGED_RETENTION_DAYS=0 must be above 0 "
     "and at most JOURNEY_DEVICE_RETENTION_DAYS=400"),
    ({"JOURNEY_MERGED_RETENTION_DAYS": "30", "JOURNEY_DEVICE_RETENTION_DAYS": "20"},
     "JOURNEY_MERGED_RETENTION_DAYS=30 must be above 0 and at most"),
])
def test_bad_values_say_which_variable(env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("/", "/")):
        Settings.from_env(env)


def test_merged_markers_may_be_kept_as_long_as_links() -> None:
    for env in ({"JOURNEY_MERGED_RETENTION_DAYS": "400"},
                {"JOURNEY_MERGED_RETENTION_DAYS": "0", "JOURNEY_DEVICE_RETENTION_DAYS": "0"},
                {"JOURNEY_MERGED_RETENTION_DAYS": "9", "JOURNEY_DEVICE_RETENTION_DAYS": "0"}):
        Settings.from_env(env)


def test_secrets_are_masked_when_described() -> None:
    s = Settings.from_env({"JOURNEY_CLICKHOUSE_URL": "clickhouse://app:s3cret@ch:9000/prod"})
    described = {env: value for env, value, _ in s.describe()}
    assert described["JOURNEY_CLICKHOUSE_URL"] == "clickhouse://app:***@ch:9000/prod"
    assert "s3cret" not in repr(described)


def test_to_env_round_trips() -> None:
    s = Settings.from_env({}).replace(topic_prefix="x", topic_partitions=3,
                                      data_dir=Path("/tmp/d"))
    assert Settings.from_env(s.to_env()) == s


def test_clickhouse_url_for_another_database_or_port_keeps_credentials() -> None:
    s = Settings.from_env({"JOURNEY_CLICKHOUSE_URL": "clickhouse://app:pw@ch:9000/prod"})
    assert s.clickhouse_url_for("t1") == "clickhouse://app:pw@ch:9000/t1"
    assert s.clickhouse_url_for(port=19000) == "clickhouse://app:pw@ch:19000/prod"
    local = Settings.from_env({"JOURNEY_CLICKHOUSE_URL": "clickhouse://127.0.0.1/journey"})
    assert local.clickhouse_url_for("x", port=9001) == "clickhouse://127.0.0.1:9001/x"


@pytest.mark.parametrize(("given", "python"), [
    ("warning", "WARNING"), ("warn", "WARNING"), ("WARN", "WARNING"), ("Info", "INFO"),
    ("crit", "CRITICAL"), ("critical", "CRITICAL"), ("error", "ERROR"), ("debug", "DEBUG"),
])
def test_log_level_accepts_every_spelling_of_the_python_levels(given: str, python: str) -> None:
    # "warning" used to pass here and then crash the worker as "WARNINGING".
    import logging

    level = Settings.from_env({"JOURNEY_LOG_LEVEL": given}).python_log_level
    assert level == python
    assert isinstance(logging.getLevelName(level), int)


def test_an_unknown_log_level_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match="JOURNEY_LOG_LEVEL='verbose': use one of CRITICAL, "
                                          "DEBUG, ERROR, INFO, WARNING"):
        Settings.from_env({"JOURNEY_LOG_LEVEL": "verbose"})
