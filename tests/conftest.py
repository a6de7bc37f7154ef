"""Shared fixtures: one broker and one ClickHouse per session; per-test names.

Servers are real (Tansu and Debian's clickhouse-server), started through the same
``deploy.stack`` code that ``journey up`` uses. A missing component fails the tests
that need it with the command that installs it; nothing is skipped silently.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from schemas.settings import Settings

if TYPE_CHECKING:
    from deploy.stack import Stack

REPO = Path(__file__).resolve().parent.parent


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free now, and never handed out before in this session: the OS may give the
    same free port to two calls in a row, and a test that starts several servers on them
    then saw ClickHouse die on the broker's port ("Address already in use")."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def own_clickhouse(settings: Settings, data_dir: Path) -> tuple[Settings, Stack]:
    """A ClickHouse server of a test's own (on free ports, in ``data_dir``), started; for
    tests that stop or kill it. Returns its settings and the stack to stop it with."""
    from deploy.stack import Stack

    own = settings.replace(
        clickhouse_url=f"clickhouse://default@127.0.0.1:{free_port()}/"
                       f"{settings.clickhouse_database}",
        clickhouse_http_port=free_port(), data_dir=data_dir)
    stack = Stack(own, echo=lambda line: None)
    stack.start(["clickhouse"])
    return own, stack


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.25,
             what: str = "condition", done: Callable[[Any], bool] = bool) -> Any:
    """Poll until ``done(predicate())`` (by default: the value is truthy); fail with
    ``what`` and the last value on timeout. ``done=lambda left: not left`` waits for
    what is still missing to be empty, and a timeout then names what is missing."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if done(last):
            return last
        time.sleep(interval)
    shown = repr(sorted(last) if isinstance(last, set | frozenset) else last)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last value: "
                f"{shown[:500]})")


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Broker and ClickHouse for the whole session, on free loopback ports."""
    from deploy.stack import Stack, StackError

    data_dir = tmp_path_factory.mktemp("stack")
    settings = Settings.from_env({}).replace(
        broker_url=f"127.0.0.1:{free_port()}",
        clickhouse_url=f"clickhouse://default@127.0.0.1:{free_port()}/default",
        clickhouse_http_port=free_port(),
        data_dir=data_dir,
        topic_partitions=4,
    )
    stack = Stack(settings, echo=lambda line: None)
    try:
        stack.start(["broker", "clickhouse"])
    except StackError as exc:
        pytest.fail(f"the local stack could not start: {exc}\n"
                    "Install what is missing with `make setup`.")
    yield settings
    stack.stop()


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    """Per-test topics, consumer group, database, data dir and worker port."""
    name = f"t{uuid.uuid4().hex[:10]}"
    return stack_settings.replace(
        topic_prefix=name,
        app_id=name,
        clickhouse_url=stack_settings.clickhouse_url_for(name),
        worker_web_port=free_port(),
        data_dir=tmp_path,
        sink_flush_seconds=0.3,
    )


@pytest.fixture
def clickhouse(settings: Settings):
    """A client on the test's own database (created with the migrations)."""
    from stream_processors.clickhouse.client import connect, migrate

    admin = connect(settings.clickhouse_url)
    migrate(admin, settings.clickhouse_database)
    client = connect(settings.clickhouse_url, database=settings.clickhouse_database)
    yield client
    client.disconnect()
    admin.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
    admin.disconnect()


class ServiceProcess:
    """A `journey` service as a child process, as production runs it; healthy on start."""

    command = ""

    def __init__(self, settings: Settings, log_path: Path, port: int,
                 env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", self.command], cwd=REPO,
            env={**os.environ, **settings.to_env(), **(env or {})},
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(self._healthy, timeout=60, what=f"{self.command} health at {self.url}")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"{self.command} exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            return r.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class WorkerProcess(ServiceProcess):
    command = "worker"

    def __init__(self, settings: Settings, log_path: Path) -> None:
        super().__init__(settings, log_path, settings.worker_web_port)


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(**changes: object) -> WorkerProcess:
        # Each worker its own web port: a second one on the same port died at bind while
        # the health check was answered by the first.
        changes.setdefault("worker_web_port", free_port() if workers else
                           settings.worker_web_port)
        worker = WorkerProcess(settings.replace(**changes), tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


class CollectorProcess(ServiceProcess):
    command = "collector"

    def __init__(self, settings: Settings, log_path: Path) -> None:
        super().__init__(settings, log_path, settings.collector_port)


TEST_WRITE_KEY = "test-write-key"  # a server key
TEST_CLIENT_KEY = "test-client-key"  # a browser's


@pytest.fixture
def start_collector(settings: Settings, tmp_path: Path
                    ) -> Iterator[Callable[..., CollectorProcess]]:
    from producers.collector.auth import hash_key
    from stream_processors.topics import ensure_topics

    ensure_topics(settings)
    started: list[CollectorProcess] = []

    def start(**changes: object) -> CollectorProcess:
        s = settings.replace(collector_port=free_port(),
                             collector_write_keys=f"shop:server={hash_key(TEST_WRITE_KEY)},"
                                                  f"web:client={hash_key(TEST_CLIENT_KEY)}",
                             collector_cors_origins="http://allowed.example")
        process = CollectorProcess(s.replace(**changes), tmp_path / f"collector-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def read_topic(settings: Settings, topic: str, expected: int, timeout: float = 30.0,
               settle: float = 1.0) -> list:
    """Every record of ``topic`` from the start; waits for ``expected`` then ``settle`` more
    seconds, so that extra (duplicate) records would be seen too."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                             enable_auto_commit=False)
    try:
        partitions = wait_for(lambda: consumer.partitions_for_topic(topic), timeout=timeout,
                              what=f"metadata of {topic}")
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        records: list = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
        end = time.monotonic() + settle
        while time.monotonic() < end:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def require_binary(name: str, install: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: {install}")
    return path
