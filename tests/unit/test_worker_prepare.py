"""A worker whose ClickHouse does not answer says so in one line, not in tracebacks."""

from __future__ import annotations

import logging
import socket

import pytest

from schemas.settings import Settings
from stream_processors.clickhouse.client import ClickHouseUnavailable
from stream_processors.worker import prepare


def test_an_unreachable_clickhouse_is_one_line_naming_the_setting(caplog) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.from_env({}).replace(
        clickhouse_url=f"clickhouse://default@127.0.0.1:{port}/journey")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ClickHouseUnavailable):
        prepare(settings, timeout=2.5)
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1, [r.getMessage() for r in said]  # 2.5 s: once, not per attempt
    assert f"127.0.0.1:{port} (JOURNEY_CLICKHOUSE_URL)" in said[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
