"""deploy/k8s: every manifest valid against the Kubernetes schemas (kubernetes-validate
ships them: no network), and consistent with the service's settings and commands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy.cli import build_parser
from schemas.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSION = "1.30.0"


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def resources() -> list[dict]:
    docs = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in resources() if d["kind"] == kind]


def pods() -> list[tuple[str, dict]]:
    return [(d["metadata"]["name"], d["spec"]["template"]) for d in resources()
            if d["kind"] in ("Deployment", "StatefulSet", "Job")]


@pytest.mark.parametrize("doc", resources(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_is_valid_kubernetes(doc: dict) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_every_file_is_in_the_kustomization() -> None:
    listed = set(kustomization()["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_workers_are_a_statefulset_with_a_volume_each_and_no_more_than_partitions() -> None:
    [config] = by_kind("ConfigMap")
    [worker] = by_kind("StatefulSet")
    assert worker["spec"]["replicas"] <= int(config["data"]["JOURNEY_TOPIC_PARTITIONS"])
    [claim] = worker["spec"]["volumeClaimTemplates"]
    [container] = worker["spec"]["template"]["spec"]["containers"]
    assert {"name": claim["metadata"]["name"], "mountPath": config["data"]["JOURNEY_DATA_DIR"]} \
        in container["volumeMounts"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_collector_scales_and_keeps_one_pod_through_disruptions() -> None:
    [hpa] = by_kind("HorizontalPodAutoscaler")
    [deployment] = by_kind("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    labels = {name: pod["metadata"]["labels"] for name, pod in pods()}
    for pdb in by_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= pod.items() for pod in labels.values()), pdb
    for service in by_kind("Service"):
        assert any(service["spec"]["selector"].items() <= pod.items()
                   for pod in labels.values()), service


def test_pods_run_project_commands_as_non_root_with_known_settings_and_scrape_annotations(
        ) -> None:
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    known = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    for kind in ("ConfigMap", "Secret"):
        [doc] = by_kind(kind)
        assert set(doc.get("data") or doc.get("stringData")) <= known, kind
    images = {i["name"] for i in kustomization()["images"]}
    for name, pod in pods():
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["spec"]["containers"]:
            assert container["image"] in images and container["args"][0] in commands, name
        if name != "journey-migrate":
            annotations = pod["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true", name
