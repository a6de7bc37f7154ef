"""`journey demo` end to end, small, on its own ports."""

import subprocess
import sys

from tests.conftest import REPO, free_port


def test_demo_runs_and_reports(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "demo", "--customers", "150", "--data-dir",
         str(tmp_path), "--broker-port", str(free_port()), "--clickhouse-port", str(free_port()),
         "--clickhouse-http-port", str(free_port()), "--worker-port", str(free_port()),
         "--collector-port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    sent = int(out.split(" / ")[1].split(" ")[0].replace(",", ""))
    assert "Done in" in out and f"{sent:,} touchpoints, " in out
    assert "0 dead letters" in out
    assert "-- Stage funnel: how many journeys ever reached each stage" in out
    assert "first_touch" in out and "recovery_rate_pct" in out
    assert "top_paths_before_order.sql" in out
    assert "clickhouse-client --host 127.0.0.1 --port" in out
    assert out.rstrip().endswith("stopped broker")
    assert (tmp_path / "clickhouse" / "data").is_dir()  # the data stays
