"""The `journey` command: the local stack, the worker, migrations and the demo."""

from __future__ import annotations

import argparse
import csv
import logging
import signal
import sys
from pathlib import Path

from schemas.settings import ConfigError, Settings

__all__ = ["main"]

_EPILOG = """\
Every option has an environment variable (JOURNEY_*); `journey config` lists them
with their current values. Options given here win over the environment.

examples:
  journey demo                      simulate 2,000 customers end to end, then stop
  journey demo --keep-running       ... and leave the stack up for exploring
  journey up --broker-port 19092    broker, ClickHouse, worker and collector until Ctrl-C
  journey up --workers 3            ... with three workers sharing the partitions
  journey status                    is each component up, and how far behind?
  journey migrate --print --dialect modern   the production DDL, without applying it
  journey forget --customer c-1001  erase a customer everywhere; suppress their events
"""


def _stack_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("local stack")
    g.add_argument("--data-dir", type=Path, help="ClickHouse data, logs and worker state "
                   "(JOURNEY_DATA_DIR, default .journey)")
    g.add_argument("--broker-port", type=int, help="Kafka port (default 9092)")
    g.add_argument("--clickhouse-port", type=int, help="ClickHouse native port (default 9000)")
    g.add_argument("--clickhouse-http-port", type=int, help="ClickHouse HTTP port (default 8123)")
    g.add_argument("--worker-port", type=int, help="worker web/metrics port (default 6066)")
    g.add_argument("--collector-port", type=int, help="HTTP collector port (default 8088)")


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings.from_env()
    changes: dict = {}
    if getattr(args, "data_dir", None):
        changes["data_dir"] = args.data_dir
    if getattr(args, "broker_port", None):
        host, _ = s.broker_host_port
        changes["broker_url"] = f"{host}:{args.broker_port}"
    if getattr(args, "clickhouse_port", None):
        changes["clickhouse_url"] = s.clickhouse_url_for(port=args.clickhouse_port)
    if getattr(args, "clickhouse_http_port", None):
        changes["clickhouse_http_port"] = args.clickhouse_http_port
    if getattr(args, "worker_port", None):
        changes["worker_web_port"] = args.worker_port
    if getattr(args, "collector_port", None):
        changes["collector_port"] = args.collector_port
    return s.replace(**changes) if changes else s


def _cmd_up(args: argparse.Namespace) -> int:
    from deploy.stack import COMPONENTS, Stack

    settings = _settings(args)
    components = [c for c in COMPONENTS
                  if not (args.no_worker and c in ("worker", "collector"))]
    _stop_on_signals()
    workers = f" ({args.workers} workers)" if args.workers > 1 else ""
    print(f"Starting {', '.join(components)}{workers} (data in {settings.data_dir.resolve()}) "
          "...")
    with Stack(settings, workers=args.workers) as stack:
        stack.start(components)
        print(f"Logs: {stack.data_dir / 'logs'}/<component>.log")
        print("Ready: the worker is consuming. Ctrl-C stops everything. A worker or "
              "collector that dies is started again.")
        try:
            name = stack.wait(restart=True)
        except KeyboardInterrupt:
            restarted = {n: k for n, k in stack.restarts().items() if k}
            if restarted:
                print("\nrestarted: " + ", ".join(f"{n} {k}x" for n, k in restarted.items()))
            print("\nStopping ...")
            return 0
        print(f"{name} exited unexpectedly; its log ends with:\n{stack.log_tail(name)}\n"
              "Stopping the rest ...", file=sys.stderr)
        return 1


def _cmd_status(args: argparse.Namespace) -> int:
    from deploy.status import components, format_status, group_state, group_whole, probe

    settings = _settings(args)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    found = [probe(c) for c in components(settings)]
    group = group_state(settings)
    print(format_status(found, group, settings.topic_prefix))
    return 0 if all(c.healthy for c in found) and group_whole(found, group) else 1


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both stop the stack in order.

    Set explicitly: a process started in the background by a non-interactive shell (CI
    runners do this) inherits SIGINT as ignored, and Python then never raises
    KeyboardInterrupt; measured: `journey up` ignored Ctrl-C under such a runner.
    """
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _cmd_worker(args: argparse.Namespace) -> int:
    from stream_processors.worker import run_worker

    run_worker(Settings.from_env())
    return 0


def _cmd_collector(args: argparse.Namespace) -> int:
    if args.hash_key:
        from producers.collector.auth import hash_key

        print(f"{args.source}:{args.kind}={hash_key(args.hash_key)}")
        return 0
    from producers.collector import run_collector

    run_collector(_settings(args))
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from stream_processors.clickhouse.client import connect, migrate, wait_until_ready
    from stream_processors.clickhouse.ddl import LEGACY, MODERN, render_all

    settings = _settings(args)
    cluster = args.cluster or settings.clickhouse_cluster or None
    if args.print:
        dialect = MODERN if args.dialect == "modern" else LEGACY
        print(render_all(dialect, settings.clickhouse_database, cluster), end="")
        return 0
    client = connect(settings.clickhouse_url)
    wait_until_ready(client, timeout=args.timeout)
    applied = migrate(client, settings.clickhouse_database, cluster)
    print(f"applied: {', '.join(applied)}" if applied else "already up to date")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from deploy.demo import run_demo

    return run_demo(_settings(args), customers=args.customers, seed=args.seed,
                    keep_running=args.keep_running, timeout=args.timeout)


def _cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.jsonschema import JSON_DIR, export
    from schemas.properties import SCHEMAS
    from schemas.touchpoint import TOUCHPOINT_TYPES

    if args.action == "export":
        written = export(args.dir or JSON_DIR)
        print(f"wrote {len(written)} JSON Schema files to {written[0].parent}")
        return 0
    for type_, stage in TOUCHPOINT_TYPES.items():
        versions = ", ".join(f"v{v}" for t, v in sorted(SCHEMAS) if t == type_)
        print(f"{type_:<26} {stage:<14} {versions}")
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from clickhouse_driver.errors import Error as ClickHouseError

    from deploy.queries import QUERY_DIR, format_table, load_queries
    from stream_processors.clickhouse.client import connect

    queries = load_queries()
    if args.name is None:
        width = max(map(len, queries))
        for name, (title, _sql) in queries.items():
            print(f"{name:<{width}}  {title}")
        print(f"\n(in {QUERY_DIR}; run one with `journey query NAME`)")
        return 0
    if args.name not in queries:
        raise ConfigError(f"no analyst query {args.name!r}; `journey query` lists them")
    settings = _settings(args)
    # clickhouse-driver logs each failed connection with its traceback; the error below
    # says it in one line.
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    client = connect(settings.clickhouse_url, database=settings.clickhouse_database)
    try:
        rows, columns = client.execute(queries[args.name][1], with_column_types=True)
    except ClickHouseError as exc:  # one line naming the setting, not a traceback
        raise ConfigError(f"{args.name} failed on {settings.clickhouse_url} "
                          f"(JOURNEY_CLICKHOUSE_URL): {str(exc).splitlines()[0]}") from None
    finally:
        client.disconnect()
    header = [name for name, _type in columns]
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(rows)
    else:
        print(f"-- {queries[args.name][0]}")
        print(format_table(header, rows))
        print(f"({len(rows)} rows)")
    return 0


def _cmd_privacy(args: argparse.Namespace) -> int:
    """forget / unsuppress: progress on stdout, the outcome last."""
    import getpass
    import socket

    from clickhouse_driver.errors import Error as ClickHouseError
    from kafka.errors import KafkaError

    from schemas.privacy import id_hash
    from stream_processors import privacy

    settings = _settings(args)
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    by = args.by or f"cli:{getpass.getuser()}@{socket.gethostname()}"
    act = privacy.forget if args.command == "forget" else privacy.unsuppress
    try:
        privacy.check_id(args.customer)
        print(f"{args.command} customer (hash {id_hash(args.customer, settings.privacy_key)}"
              f"), requested by {by} ...")
        report = act(settings, args.customer, requested_by=by,
                     progress=lambda line: print(f"  {line}"))
    except privacy.PrivacyError as exc:
        raise ConfigError(str(exc)) from None
    except (ClickHouseError, OSError, EOFError) as exc:
        raise ConfigError(f"ClickHouse at {settings.clickhouse_url} (JOURNEY_CLICKHOUSE_URL): "
                          f"{str(exc).splitlines()[0]}") from None
    except KafkaError as exc:
        raise ConfigError(f"the broker at {settings.broker_url} (JOURNEY_BROKER_URL): "
                          f"{exc}") from None
    print(f"Done (request {report.request}): {report.summary()}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    """History into the pipeline (producers/importer.py): progress on stderr, the
    summary on stdout, rejected rows with their reasons beside the file."""
    from producers.importer import guess_format, import_file, parse_pairs

    settings = _settings(args)
    path: Path = args.file
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        mapping = parse_pairs(args.map, "--map")
        constants = parse_pairs(args.set, "--set")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    fmt = args.format or guess_format(path)
    if fmt == "csv" and not mapping:
        raise ConfigError("a CSV file needs --map COLUMN=FIELD for its columns, e.g. "
                          "--map created_at=occurred_at --map email=customer_id "
                          "--map rating=properties.score --set type=survey_response")
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    print(f"Importing {path} as {fmt} into {settings.touchpoints_topic} ...", file=sys.stderr)
    summary, rejects = import_file(settings, path, fmt, source=args.source, mapping=mapping,
                                   constants=constants, check_clickhouse=not args.no_check,
                                   progress=not args.quiet)
    for line in summary.lines():
        print(line)
    if rejects is not None:
        print(f"rejected rows, with their reasons: {rejects}")
    return 0 if summary.accepted or summary.duplicates or not summary.rows else 1


def _cmd_config(args: argparse.Namespace) -> int:
    for env, value, doc in _settings(args).describe():
        print(f"{env:<34} {value}\n{'':<34} {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="journey", description="Customer-journey tracking: touchpoints through Kafka and "
        "Faust into ClickHouse.", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start broker, ClickHouse, worker and collector until Ctrl-C")
    _stack_options(p)
    p.add_argument("--no-worker", action="store_true", help="start only broker and ClickHouse")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N workers, sharing the partitions (web ports from --worker-port "
                   "on, one state directory each; default 1)")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("status", help="each component of the stack: health, partitions, "
                       "consumer lag, and whether the workers own every input partition "
                       "once (exit 1 if one is unhealthy, or a partition is owned by none "
                       "or by two)")
    _stack_options(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("demo", help="simulate customers through the whole local pipeline")
    _stack_options(p)
    p.add_argument("--customers", type=int, default=2000, help="how many (default 2000)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--keep-running", action="store_true", help="leave the stack up afterwards")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="seconds to wait for ClickHouse to hold everything (default 180)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("worker", help="run one Faust worker (settings from JOURNEY_*)")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("collector", help="run the HTTP collector (Segment-compatible)")
    p.add_argument("--hash-key", metavar="KEY", help="print the JOURNEY_COLLECTOR_WRITE_KEYS "
                   "entry for KEY instead of serving")
    p.add_argument("--source", default="web", help="with --hash-key: the source the key "
                   "belongs to (default web)")
    p.add_argument("--kind", choices=("client", "server"), default="client",
                   help="with --hash-key: client (a browser or app; public; no server-only "
                   "types) or server (a shop's backend); default client")
    p.set_defaults(func=_cmd_collector)

    p = sub.add_parser("migrate", help="apply the ClickHouse migrations (idempotent)")
    p.add_argument("--print", action="store_true", help="print the DDL instead of applying it")
    p.add_argument("--dialect", choices=("legacy", "modern"), default="modern",
                   help="with --print: legacy (ClickHouse 18.16) or modern (23.8+)")
    p.add_argument("--timeout", type=float, default=60.0, help="wait this long for ClickHouse")
    p.add_argument("--cluster", metavar="NAME", help="replicate the tables over this "
                   "ClickHouse cluster (remote_servers name): Replicated*MergeTree "
                   "`<table>_local` tables behind Distributed ones, DDL ON CLUSTER "
                   "(JOURNEY_CLICKHOUSE_CLUSTER)")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("schemas", help="list touchpoint types and versions, or export "
                       "their JSON Schema")
    p.add_argument("action", choices=("list", "export"), nargs="?", default="list")
    p.add_argument("dir", type=Path, nargs="?", help="with export: target directory "
                   "(default: schemas/json in the package)")
    p.set_defaults(func=_cmd_schemas)

    p = sub.add_parser("query", help="run an analyst query (deploy/clickhouse/queries) and "
                       "print a table; without NAME, list them")
    p.add_argument("name", nargs="?", help="e.g. journeys_by_stage")
    p.add_argument("--csv", action="store_true", help="CSV with a header, for a spreadsheet")
    p.set_defaults(func=_cmd_query)

    for name, help_, action in (
            ("forget", "erase a customer and their devices from the worker's state and "
             "every ClickHouse table, and drop their later events", "erased and suppressed"),
            ("unsuppress", "let a forgotten customer's (and their devices') events in "
             "again", "allowed again")):
        p = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ". "
                           "Waits for every worker partition to answer and for ClickHouse's "
                           "deletions to finish (JOURNEY_PRIVACY_TIMEOUT_SECONDS); the request "
                           "is recorded in privacy_audit with the id's keyed hash, never the "
                           "id.")
        p.add_argument("--customer", required=True, metavar="ID",
                       help=f"the customer id to be {action} (as sent in userId/customer_id)")
        p.add_argument("--by", metavar="WHO", help="who asks, for the audit (default "
                       "cli:<user>@<host>)")
        p.set_defaults(func=_cmd_privacy)

    p = sub.add_parser(
        "import", help="send a file of history through the pipeline (JSONL in our format or "
        "Segment's, or CSV with a column mapping); re-running it changes nothing",
        description="Validates every row like live traffic (schemas, time bounds, personal "
        "data redacted), sends the valid ones at full speed, and ends with a summary: sent, "
        "duplicates (already in ClickHouse, or repeated in the file) and rejected rows by "
        "reason, which are written to FILE.rejected.jsonl. Rows without an event id get one "
        "derived from their content, so an import run twice sends the same ids.",
        epilog="examples:\n  journey import segment-export.jsonl\n"
        "  journey import csat.csv --map ticket=properties.ticket_id "
        "--map email=customer_id \\\n      --map rating=properties.score --map "
        "answered_at=occurred_at --set type=survey_response \\\n      --set "
        "properties.survey=csat --set channel=email",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _stack_options(p)
    p.add_argument("file", type=Path, help="a .jsonl (or .json lines) or .csv file")
    p.add_argument("--format", choices=("touchpoint", "segment", "csv"),
                   help="the rows' format (default: csv by suffix; JSON lines of Segment "
                   "messages are recognised, else our touchpoint format)")
    p.add_argument("--map", action="append", metavar="COLUMN=FIELD",
                   help="CSV: where a column goes (occurred_at, customer_id, anonymous_id, "
                   "event_id, type, channel, properties.<name>, context.<name>); repeat it")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="a value every row gets (e.g. type=survey_response); repeat it")
    p.add_argument("--source", default="import", help="the rows' source (default import)")
    p.add_argument("--no-check", action="store_true",
                   help="do not ask ClickHouse which event ids it holds already")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("config", help="list every setting, its variable and current value")
    p.set_defaults(func=_cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Progress lines must show up promptly when piped into a log or a test.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    args = build_parser().parse_args(argv)
    from deploy.stack import StackError

    try:
        return args.func(args)
    except (StackError, ConfigError) as exc:
        for line in str(exc).splitlines():
            print(f"journey: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
