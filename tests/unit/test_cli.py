import subprocess
import sys

import pytest

from deploy.cli import main


def test_help_lists_commands_and_examples() -> None:
    out = subprocess.run([sys.executable, "-m", "deploy.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for word in ("up", "demo", "worker", "migrate", "config", "journey demo --keep-running"):
        assert word in out


def test_migrate_print_renders_without_a_server(capsys: pytest.CaptureFixture) -> None:
    assert main(["migrate", "--print", "--dialect", "legacy"]) == 0
    out = capsys.readouterr().out
    assert "CREATE TABLE IF NOT EXISTS journey.touchpoints" in out
    assert "DateTime64" not in out


def test_config_lists_every_variable(capsys: pytest.CaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNEY_TOPIC_PREFIX", "shop1")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "JOURNEY_TOPIC_PREFIX" in out and "shop1" in out
    assert "JOURNEY_CLICKHOUSE_URL" in out


def test_bad_configuration_is_one_line_and_exit_2(capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNEY_STORE", "redis://")
    assert main(["config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("journey: JOURNEY_STORE='redis://'") and "\n" not in err


def test_schemas_list_and_export(capsys: pytest.CaptureFixture, tmp_path) -> None:
    assert main(["schemas"]) == 0
    out = capsys.readouterr().out
    assert "order_placed               purchase       v1, v2" in out
    assert main(["schemas", "export", str(tmp_path)]) == 0
    assert (tmp_path / "order_placed.v2.json").exists()
    assert len(list(tmp_path.glob("*.json"))) == 26


def test_query_lists_the_analyst_queries_and_refuses_an_unknown_one(
        capsys: pytest.CaptureFixture) -> None:
    from deploy.queries import QUERY_DIR

    assert main(["query"]) == 0
    out = capsys.readouterr().out
    names = sorted(p.stem for p in QUERY_DIR.glob("*.sql"))
    assert [line.split()[0] for line in out.splitlines()[:len(names)]] == names
    assert main(["query", "no_such_query"]) == 2
    assert "`journey query` lists them" in capsys.readouterr().err
