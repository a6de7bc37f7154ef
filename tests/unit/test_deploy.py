"""deploy/ cannot run here (no Docker engine); check what can be checked."""

from pathlib import Path

import yaml

from deploy.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_has_the_production_services() -> None:
    assert {"kafka", "clickhouse", "prometheus", "worker", "collector", "migrate"} <= set(
        compose()["services"])


def test_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        if "image" in service:
            repo, _, tag = service["image"].rpartition(":")
            assert repo and tag and tag != "latest", name


def test_long_running_services_have_health_checks() -> None:
    for name, service in compose()["services"].items():
        if service.get("restart") != "no":
            assert "healthcheck" in service, name


def test_every_project_command_exists() -> None:
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    built = {n: s for n, s in compose()["services"].items() if "build" in s}
    assert built
    for name, service in built.items():
        assert service["command"][0] in commands, name
        assert (DEPLOY.parent / service["build"]["dockerfile"]).exists()


def test_mounted_files_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), (name, source)


def test_services_listen_beyond_loopback_in_containers() -> None:
    services = compose()["services"]
    assert services["worker"]["environment"]["JOURNEY_WORKER_WEB_HOST"] == "0.0.0.0"
    assert services["worker"]["environment"]["JOURNEY_STORE"] == "rocksdb://"
    assert services["collector"]["environment"]["JOURNEY_COLLECTOR_HOST"] == "0.0.0.0"


def test_workers_and_collectors_restart_on_failure() -> None:
    services = compose()["services"]
    assert services["worker"]["restart"] == "unless-stopped"
    assert services["collector"]["restart"] == "unless-stopped"


def test_clickhouse_is_neither_public_nor_on_a_default_password() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert "change-me" not in text
    clickhouse = compose()["services"]["clickhouse"]
    assert clickhouse["environment"]["CLICKHOUSE_PASSWORD"].startswith(
        "${CLICKHOUSE_PASSWORD:?")  # compose refuses to start without one
    assert all(port.startswith("127.0.0.1:") for port in clickhouse["ports"])
