"""The checked-in dashboards are what deploy/grafana/dashboards.py renders, and every
datasource and mount they need is provisioned."""

import json
from pathlib import Path

import yaml

from deploy.grafana.dashboards import DASHBOARDS, OUT, render

PROVISIONING = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "provisioning"


def test_checked_in_dashboards_match_the_code() -> None:
    for name in DASHBOARDS:
        assert (OUT / f"{name}.json").read_text() == render(name), (
            f"{name}: run `python -m deploy.grafana.dashboards` and commit the JSON")


def test_every_panel_uses_a_provisioned_datasource_and_has_a_query() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "journey.yml").read_text())
    uids = {(s["type"], s["uid"]) for s in sources["datasources"]}
    uids_seen = set()
    for name in DASHBOARDS:
        dashboard = json.loads((OUT / f"{name}.json").read_text())
        assert dashboard["uid"].startswith("journey-")
        for panel in dashboard["panels"]:
            source = panel["datasource"]
            uids_seen.add((source["type"], source["uid"]))
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target.get("expr") or target.get("rawSql"), panel["title"]
    assert uids_seen == uids
