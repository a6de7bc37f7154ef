"""`journey demo`: the whole pipeline on the local stack, from simulated shoppers to SQL."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

from clickhouse_driver import Client

from deploy.queries import QUERY_DIR, format_table, load_queries
from deploy.report import cx_summary, format_summary, write_report
from deploy.stack import Stack, StackError
from producers import JourneyClient
from producers.simulator import in_time_order, simulate
from schemas.settings import Settings
from stream_processors.clickhouse.client import connect, migrate

__all__ = ["DEMO_QUERIES", "run_demo"]

#: The queries the demo runs and prints; the rest are listed by name.
DEMO_QUERIES = ("stage_funnel_conversion", "campaign_attribution", "service_recovery_rate")


def run_demo(settings: Settings, *, customers: int = 2000, seed: int = 7,
             keep_running: bool = False, timeout: float = 180.0,
             echo: Callable[[str], None] = print) -> int:
    started = time.monotonic()
    db = settings.clickhouse_database
    echo(f"Starting the local stack (data in {settings.data_dir.resolve()}) ...")
    with Stack(settings, echo=echo) as stack:
        stack.start(["broker", "clickhouse"])
        client = connect(settings.clickhouse_url)
        # The broker keeps nothing between runs (in-memory), so neither does the demo's
        # database: journeys rebuilt from an empty topic must not meet older snapshots.
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        migrate(client, db)
        stack.start(["worker", "collector"])

        echo(f"\nSimulating {customers:,} customers' journeys (seed {seed}) ...")
        people = simulate(customers, seed=seed)
        events = list(in_time_order(people))
        journeys_expected = len(people)  # one each: the customer's, or the device's
        spool = stack.data_dir / "sdk-spool"
        shutil.rmtree(spool, ignore_errors=True)  # a previous run's leftovers, if any
        with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                           source="demo", spool_dir=spool) as sdk:
            step = max(1, len(events) // 10)
            for i, event in enumerate(events, 1):
                sdk.send(event)
                if i % step == 0 or i == len(events):
                    echo(f"  sent {i:>8,} / {len(events):,} touchpoints")
        echo(f"\nWaiting for ClickHouse to hold all {len(events):,} touchpoints "
             f"and {journeys_expected:,} journeys ...")
        db_client = connect(settings.clickhouse_url, database=db)
        deadline = time.monotonic() + timeout
        last = (-1, -1)
        while True:
            counts = (
                db_client.execute("SELECT count() FROM touchpoints FINAL")[0][0],
                db_client.execute("SELECT count() FROM customer_journeys FINAL "
                                  "WHERE merged_into = ''")[0][0],
            )
            if counts != last:
                echo(f"  {counts[0]:>8,} touchpoints, {counts[1]:>7,} journeys")
                last = counts
            if counts == (len(events), journeys_expected):
                break
            if time.monotonic() > deadline:
                raise StackError(f"ClickHouse holds {counts[0]:,} of {len(events):,} touchpoints "
                                 f"after {timeout:.0f} s; see the worker's log: "
                                 f"{stack.data_dir / 'logs' / 'worker.log'}")
            time.sleep(1)

        _summary(db_client, len(events), time.monotonic() - started, echo)
        summary = cx_summary(db_client)
        echo(format_summary(summary))
        report = write_report(summary, stack.data_dir / "report.html")
        echo(f"  charts (funnel, NPS and CSAT by day, service recovery): {report.resolve()}\n")
        host, port = settings.clickhouse_host_port
        echo("Query further with:\n"
             f"  clickhouse-client --host {host} --port {port} --database {db}\n"
             "  (remember FINAL, e.g. SELECT * FROM customer_journeys FINAL LIMIT 5)")
        if keep_running:
            echo("\nThe stack keeps running; Ctrl-C stops it.")
            try:
                name = stack.wait()
                echo(f"{name} exited; stopping the stack")
                return 1
            except KeyboardInterrupt:
                echo("")
        echo("\nStopping the stack; the data stays in "
             f"{settings.data_dir.resolve() / 'clickhouse'}.")
    return 0


def _summary(client: Client, sent: int, elapsed: float, echo: Callable[[str], None]) -> None:
    journeys, identified, orders, revenue = client.execute(
        "SELECT count(), countIf(customer_id != ''), sum(orders), sum(revenue) "
        "FROM customer_journeys FINAL WHERE merged_into = ''")[0]
    dead = client.execute("SELECT count() FROM dead_letters")[0][0]
    echo(f"\nDone in {elapsed:.0f} s: {sent:,} touchpoints, {journeys:,} journeys "
         f"({identified:,} identified customers), {orders:,} orders, "
         f"EUR {revenue:,.2f} revenue, {dead} dead letters.\n")
    queries = load_queries()
    for name in DEMO_QUERIES:
        title, sql = queries[name]
        rows, columns = client.execute(sql, with_column_types=True)
        echo(f"-- {title}")
        echo(_indent(sql.split("\n", 1)[1] if sql.startswith("--") else sql))
        echo(format_table([c for c, _ in columns], rows))
        echo("")


    others = ", ".join(f"{n}.sql" for n in queries if n not in DEMO_QUERIES)
    echo(f"More analyst queries in {QUERY_DIR}: {others}\n")


def _indent(text: str) -> str:
    lines = [line for line in text.splitlines() if not line.startswith("--")]
    return "\n".join("    " + line for line in lines)
