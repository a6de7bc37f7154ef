"""The sink's datetime pre-conversion gives exactly the integers clickhouse-driver would."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from clickhouse_driver.columns.service import get_column_by_spec
from clickhouse_driver.context import Context

from stream_processors.clickhouse.timestamps import convert_columns, converter_for, converters_for

VALUES = [datetime(2026, 5, 4, 10, 7, 30, 123456, tzinfo=UTC),
          datetime(2026, 5, 4, 12, 7, 30, 999999, tzinfo=timezone(timedelta(hours=2))),
          datetime(1999, 12, 31, 23, 59, 59, 500, tzinfo=UTC)]


class ServerInfo:
    def get_timezone(self) -> str:
        return "UTC"  # the server zone: only naive datetimes would depend on it


def driver_conversion(spec: str, values: list) -> list:
    context = Context()
    context.client_settings = {"strings_as_bytes": False, "use_numpy": False,
                               "strings_encoding": "utf-8",
                               "input_format_null_as_default": False}
    context.server_info = ServerInfo()
    context.settings = {}
    items = list(values)
    get_column_by_spec(spec, {"context": context}).before_write_items(items)
    return items


@pytest.mark.parametrize("spec", ["DateTime", "DateTime('UTC')", "DateTime64(3)",
                                  "DateTime64(6, 'UTC')", "DateTime64(0)"])
def test_same_integers_as_the_driver(spec: str) -> None:
    convert = converter_for(spec)
    assert convert is not None
    assert [convert(v) for v in VALUES] == driver_conversion(spec, VALUES)
    wrapped = converter_for(f"Nullable({spec})")
    assert wrapped is not None and wrapped(None) is None
    array = converter_for(f"Array({spec})")
    assert array is not None and array(VALUES) == driver_conversion(spec, VALUES)


def test_other_columns_and_naive_datetimes_are_left_to_the_driver() -> None:
    assert converter_for("String") is None and converter_for("Array(UInt32)") is None
    assert converter_for("LowCardinality(String)") is None and converter_for("Date") is None
    naive = datetime(2026, 5, 4, 10, 7, 30)
    rows = [("a", VALUES[0], naive, 7)]
    converters = converters_for(["id", "at", "local", "n"],
                                {"id": "String", "at": "DateTime", "local": "DateTime",
                                 "n": "UInt8"})
    assert convert_columns(rows, converters, 4) == [["a"], [1777889250], [naive], [7]]
    assert convert_columns([], converters, 4) == [[], [], [], []]
