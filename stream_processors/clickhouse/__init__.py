"""ClickHouse: the client, the migrations and the worker's sink."""

import os

# clickhouse-driver builds date lookup tables for 1900-2299 when it is imported: 20 MB
# of the worker's memory (tracemalloc, README "Benchmarks"). Its documented switch
# (mymarilyn/clickhouse-driver#430) fills them with the dates used instead.
os.environ.setdefault("CLICKHOUSE_DRIVER_LASY_DATE_LUT", "2020-01-01:2020-01-01")
