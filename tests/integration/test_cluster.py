"""A replicated ClickHouse on one machine: ZooKeeper (Debian's 3.8) and two 18.16 servers
as two replicas of one shard. The worker migrates and writes through the cluster's
Distributed tables; one replica is stopped during a replay and brought back: in the end
both replicas hold the same rows, nothing is lost, and the analyst queries run."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from deploy.queries import load_queries
from producers import JourneyClient
from producers.simulator import simulate
from stream_processors.clickhouse.client import connect
from stream_processors.privacy import forget
from tests.conftest import free_port, require_binary, wait_for

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
CLUSTER = "journey"
#: Each table, and the columns that tell its rows' facts and versions apart.
TABLES = {"touchpoints": "event_id, customer_id, row_version",
          "customer_journeys": "journey_key, version",
          "journey_transitions": "journey_key, seq, row_version",
          "support_tickets": "ticket_id, row_version", "journey_alerts": "alert_id",
          "cx_metrics": "metric, dimension, window, window_start, version",
          "dead_letters": "topic, partition, offset"}


def start_zookeeper(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    java = require_binary("java", "`sudo apt-get install zookeeper` (`make setup`)")
    if not ZOOKEEPER_JAR.exists():
        pytest.fail("ZooKeeper is not installed: `sudo apt-get install zookeeper` "
                    "(`make setup`)")
    port = free_port()
    log = open(tmp_path / "zookeeper.log", "wb")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen(
        [java, "-Xmx256m", "-cp", str(ZOOKEEPER_JAR),
         "org.apache.zookeeper.server.ZooKeeperServerMain", str(port),
         str(tmp_path / "zookeeper")], stdout=log, stderr=subprocess.STDOUT)
    # Serving before ClickHouse starts: 18.16 crashed (SIGSEGV in createImpl) when its
    # first connection to ZooKeeper had been refused.
    wait_for(lambda: _serving(port), timeout=60, what="ZooKeeper to serve")
    return process, port


def _serving(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"srvr")
            return b"Mode: standalone" in s.recv(1000)
    except OSError:
        return False


def cluster_xml(zookeeper: int, replica: int, ports: list[int], interserver: int) -> str:
    replicas = "".join(f"<replica><host>127.0.0.1</host><port>{p}</port></replica>"
                       for p in ports)
    return f"""
    <zookeeper><node><host>127.0.0.1</host><port>{zookeeper}</port></node></zookeeper>
    <macros><shard>01</shard><replica>r{replica}</replica></macros>
    <remote_servers><{CLUSTER}><shard><internal_replication>true</internal_replication>
        {replicas}</shard></{CLUSTER}></remote_servers>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <interserver_http_port>{interserver}</interserver_http_port>
"""


def test_a_replica_stopped_during_a_replay_catches_up(settings, stack_settings, start_worker,
                                                      tmp_path) -> None:
    from deploy.stack import Stack

    zookeeper, zk_port = start_zookeeper(tmp_path)
    ports = [free_port(), free_port()]
    replicas: list[tuple[Stack, object]] = []
    try:
        for i, port in enumerate(ports, start=1):
            own = settings.replace(
                clickhouse_url=f"clickhouse://default@127.0.0.1:{port}/"
                               f"{settings.clickhouse_database}",
                clickhouse_http_port=free_port(), data_dir=tmp_path / f"replica-{i}")
            stack = Stack(own, echo=lambda line: None,
                          clickhouse_config=cluster_xml(zk_port, i, ports, free_port()))
            stack.start(["clickhouse"])
            replicas.append((stack, own))
        one = replicas[0][1]
        worker = start_worker(clickhouse_url=one.clickhouse_url, clickhouse_cluster=CLUSTER,
                              churn_inactive_days=0.0)
        db = settings.clickhouse_database
        first = connect(one.clickhouse_url, database=db)
        tables = {r[0] for r in first.execute(f"SHOW TABLES FROM {db}")}
        assert {"touchpoints", "touchpoints_local", "cx_metrics_local"} <= tables
        engine = first.execute(f"SELECT engine FROM system.tables WHERE database = '{db}' "
                               "AND name IN ('touchpoints', 'touchpoints_local') ORDER BY name")
        assert engine == [("Distributed",), ("ReplicatedReplacingMergeTree",)]

        people = simulate(200, seed=31, prefix="cl-")
        events = [e for p in people for e in p.events]
        half = len(events) // 2
        with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                           spool_dir=tmp_path / "spool") as sdk:
            for e in events[:half]:
                sdk.send(e)
            sdk.flush()
            wait_for(lambda: first.execute("SELECT count() FROM touchpoints FINAL")[0][0]
                     >= half // 2, timeout=90, what="the replay to be under way")
            replicas[1][0].stop()  # replica 2 goes down mid-replay
            for e in events[half:]:
                sdk.send(e)
        wait_for(lambda: first.execute("SELECT count() FROM touchpoints FINAL")[0][0]
                 == len(events), timeout=120, what="every touchpoint through the cluster")
        while_down = first.execute("SELECT count() FROM touchpoints_local")[0][0]
        back = time.monotonic()
        replicas[1][0].start(["clickhouse"])  # back, with its data directory
        second = connect(replicas[1][1].clickhouse_url, database=db)

        def digests(client) -> dict[str, tuple]:
            return {t: tuple(client.execute(
                f"SELECT count(), sum(cityHash64({columns})) FROM {t}_local FINAL")[0])
                for t, columns in TABLES.items()}

        try:
            wait_for(lambda: digests(first) == digests(second), timeout=120,
                     what="both replicas to hold the same rows")
        except BaseException:
            print(digests(first), digests(second))
            raise
        print(f"replica 2 caught up in {time.monotonic() - back:.1f} s; {len(events)} "
              f"touchpoints, {while_down} rows on replica 1 when it came back")
        assert digests(second)["touchpoints"][0] == len(events)
        assert digests(second)["cx_metrics"][0] > 0
        for name, (_title, sql) in load_queries().items():  # the analysts' SQL, on the cluster
            assert first.execute(sql) is not None, name
        # A forget deletes on every replica (ALTER ... DELETE ON CLUSTER on the _local tables).
        customer = events[0].customer_id or next(e.customer_id for e in events if e.customer_id)
        report = forget(worker.settings, customer, requested_by="test")
        assert report.outcome == "erased" and report.rows["touchpoints"] > 0
        for client in (first, second):
            wait_for(lambda c=client: c.execute(
                "SELECT count() FROM touchpoints_local WHERE customer_id = %(c)s",
                {"c": customer})[0][0] == 0, timeout=30, what="the forget on both replicas")
        assert worker.process.poll() is None
    finally:
        for stack, _ in replicas:
            stack.stop()
        zookeeper.terminate()
        zookeeper.wait(10)
