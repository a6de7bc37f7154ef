"""`journey up` starts and stops real servers; a taken port gives the promised message."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from deploy.stack import port_in_use
from tests.conftest import REPO, free_port, wait_for


def test_up_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    ports = {"--broker-port": free_port(), "--clickhouse-port": free_port(),
             "--clickhouse-http-port": free_port(), "--worker-port": free_port(),
             "--collector-port": free_port()}
    argv = [sys.executable, "-m", "deploy.cli", "up", "--data-dir", str(tmp_path)]
    for flag, port in ports.items():
        argv += [flag, str(port)]
    env_log = open(tmp_path / "up.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=REPO, stdout=env_log, stderr=subprocess.STDOUT,
                            env={"PATH": "/usr/sbin:/usr/bin:/bin", "HOME": str(Path.home()),
                                 "JOURNEY_TOPIC_PARTITIONS": "2"})
    out = tmp_path / "up.out"
    try:
        wait_for(lambda: "Ready:" in out.read_text() or proc.poll() is not None, timeout=120,
                 what="`journey up` to report Ready")
        text = out.read_text()
        assert proc.poll() is None, text
        # Ready means consuming: the worker holds its partitions already.
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['--worker-port']}/readyz") as r:
            assert r.status == 200 and json.loads(r.read())["partitions"] > 0
        assert f"Logs: {tmp_path.resolve() / 'logs'}" in text
        assert f"kafka://127.0.0.1:{ports['--broker-port']}" in text
        assert f"clickhouse://127.0.0.1:{ports['--clickhouse-port']}" in text
        assert f"http://127.0.0.1:{ports['--worker-port']}/metrics" in text
        assert f"http://127.0.0.1:{ports['--collector-port']}/v1/batch" in text
        for port in ports.values():
            assert port_in_use("127.0.0.1", port)
        # Loopback only: a development stack is not reachable from the network.
        assert {port: _listening_on(port) for port in ports.values()} == {
            port: {"127.0.0.1"} for port in ports.values()}
        # The data directory holds everything the servers wrote.
        assert (tmp_path / "clickhouse" / "data").is_dir()
        assert (tmp_path / "logs" / "worker.log").exists()
        # A worker killed outright is started again, and `up` says so.
        worker_pid = int(re.search(r"worker .*\(pid (\d+)\)", text).group(1))
        os.kill(worker_pid, signal.SIGKILL)
        wait_for(lambda: "worker exited with code -9" in out.read_text(), timeout=30,
                 what="`journey up` to notice the dead worker")
        assert "restarting it in 1 s (restart 1)" in out.read_text()
        wait_for(lambda: len(re.findall(r"worker .*\(pid \d+\)", out.read_text())) == 2,
                 timeout=60, what="the worker to be healthy again")
        assert proc.poll() is None
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['--worker-port']}/healthz") as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        env_log.close()
    text = out.read_text()
    assert "restarted: worker 1x" in text
    assert text.index("stopped collector") < text.index("stopped worker") \
        < text.index("stopped clickhouse") < text.index("stopped broker")
    time.sleep(0.5)
    assert not any(port_in_use("127.0.0.1", p) for p in ports.values())


def test_up_on_taken_ports_names_them_all_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as one, socket.socket() as two:
        for squatter in (one, two):
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
        port, other = one.getsockname()[1], two.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "deploy.cli", "up", "--data-dir", str(tmp_path),
             "--broker-port", str(port), "--clickhouse-port", str(free_port()),
             "--clickhouse-http-port", str(free_port()), "--worker-port", str(other),
             "--collector-port", str(free_port())],
            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"journey: port {port} on 127.0.0.1 (broker) is already in use: stop what listens "
        "there or choose another port with --broker-port or JOURNEY_BROKER_URL",
        f"journey: port {other} on 127.0.0.1 (worker) is already in use: stop what listens "
        "there or choose another port with --worker-port or JOURNEY_WORKER_WEB_PORT"]
    # Nothing was started, and nothing written: not even ClickHouse's config.
    assert not (tmp_path / "logs").exists() and not (tmp_path / "clickhouse").exists()


def test_up_refuses_one_port_given_to_two_components_before_starting_anything(
        tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "up", "--data-dir", str(tmp_path),
         "--broker-port", str(port), "--clickhouse-port", str(free_port()),
         "--clickhouse-http-port", str(port), "--worker-port", str(free_port()),
         "--collector-port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"journey: port {port} is given to both broker (--broker-port or JOURNEY_BROKER_URL) "
        "and clickhouse (--clickhouse-http-port or JOURNEY_CLICKHOUSE_HTTP_PORT): choose "
        "another for one of them"]
    assert not (tmp_path / "logs").exists() and not (tmp_path / "clickhouse").exists()


def _listening_on(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on ``port`` (from /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.rpartition(":")
                if state != "0A" or int(hex_port, 16) != port:
                    continue
                if len(address) == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    words = bytes.fromhex(address)
                    raw = b"".join(words[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


def test_up_with_two_workers_shares_the_partitions_and_status_shows_each(
        tmp_path: Path) -> None:
    worker_port = free_port()
    while port_in_use("127.0.0.1", worker_port + 1):  # the second worker's
        worker_port = free_port()
    ports = {"--broker-port": free_port(), "--clickhouse-port": free_port(),
             "--clickhouse-http-port": free_port(), "--worker-port": worker_port,
             "--collector-port": free_port()}
    flags = ["--data-dir", str(tmp_path)] + [str(x) for kv in ports.items() for x in kv]
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "HOME": str(Path.home()),
           "JOURNEY_TOPIC_PARTITIONS": "4"}
    out = tmp_path / "up.out"
    log = open(out, "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "up", "--workers", "2", *flags],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)

    def status() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deploy.cli", "status", *flags], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=60)

    try:
        wait_for(lambda: "Ready:" in out.read_text() or proc.poll() is not None, timeout=180,
                 what="`journey up --workers 2` to report Ready")
        assert proc.poll() is None, out.read_text()
        held = {}
        for i, port in enumerate((worker_port, worker_port + 1), start=1):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as r:
                held[i] = json.loads(r.read())["partitions"]
            # Each its own state directory and log.
            assert (tmp_path / "workers" / f"worker-{i}" / "worker").is_dir()
            assert (tmp_path / "logs" / f"worker-{i}.log").exists()

        def both_ready() -> subprocess.CompletedProcess | None:
            result = status()
            return result if result.returncode == 0 else None

        shown = wait_for(both_ready, timeout=60, what="`journey status` to say all is well")
        lines = shown.stdout.splitlines()
        print(shown.stdout)
        assert lines[0].split()[:3] == ["component", "state", "address"]
        rows = {line.split()[0]: line.split()[1] for line in lines[1:] if line.strip()
                and not line.startswith(("consumer lag", "partitions:"))}
        assert rows == {"broker": "up", "clickhouse": "up", "worker-1": "ready",
                        "worker-2": "ready", "collector": "up"}
        # The two workers share the partitions (the same topics, 4 partitions each): the
        # five input topics' 20 partitions, each owned by one of them.
        assert held[1] > 0 and held[2] > 0
        inputs = {}
        for i, port in enumerate((worker_port, worker_port + 1), start=1):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as r:
                inputs[i] = set(json.loads(r.read())["inputs"])
        topics = ("touchpoints", "touchpoints-by-device", "journey-events", "cx-partials",
                  "dead-letters")
        assert inputs[1].isdisjoint(inputs[2]) and len(inputs[1] | inputs[2]) == 5 * 4, inputs
        assert {tp.rsplit(":", 1)[0].split(".", 1)[1] for tp in inputs[1] | inputs[2]} == \
            set(topics)
        assert "partitions: each of the 20 input partitions owned by one of 2 workers" in \
            shown.stdout
        assert re.search(r"worker-1 .* \d+ partitions assigned, lag [\d,]+", shown.stdout)
        assert re.search(r"^consumer lag: [\d,]+ records \(.*touchpoints \d+",
                         shown.stdout, re.M)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    # Stopped: status names every component down and exits 1.
    after = status()
    assert after.returncode == 1
    assert all(line.split()[1] == "down" for line in after.stdout.splitlines()[1:5]), \
        after.stdout
