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


def test_the_image_runs_as_a_user_that_owns_the_state_directory() -> None:
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user == ["10001:10001"]  # numeric, not root (Kubernetes' runAsNonRoot checks it)
    assert "--uid 10001" in dockerfile and "--home-dir /var/lib/journey --create-home" in \
        dockerfile
    assert "ENV JOURNEY_DATA_DIR=/var/lib/journey" in dockerfile


def test_scaled_workers_do_not_share_a_state_volume() -> None:
    worker = compose()["services"]["worker"]
    # An anonymous volume (a path alone) is made per container; a named one is shared.
    assert worker["volumes"] == [worker["environment"]["JOURNEY_DATA_DIR"]]
    assert "container_name" not in worker  # which would forbid --scale


def test_grafana_is_provisioned_with_its_datasources_and_dashboards() -> None:
    grafana = compose()["services"]["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards"] == "./grafana/dashboards"
