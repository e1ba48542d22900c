"""infra/grafana/resnet-orch.json: valid JSON that Grafana imports (a dashboard with templated Prometheus queries),
one panel per live series of `orchestrator.training.live_metrics` under the name Ray's Prometheus export gives it,
and the KubeRay head wired to Grafana and Prometheus the way the Ray dashboard embeds them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.training import metric_names as m

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "infra" / "grafana" / "resnet-orch.json"
# Ray's Prometheus export prefixes every application metric with `ray_`; a counter's series ends in `_total`.
EXPORTED = {f"ray_{m.LIVE_PREFIX}{name}": name for name in m.LIVE_GAUGES} | {
    f"ray_{m.LIVE_PREFIX}{m.LIVE_IMAGES_TRAINED}_total": m.LIVE_IMAGES_TRAINED
}
_SERIES = re.compile(r"\bray_resnet_orch_[a-z_]+")


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _series(expr: str) -> set[str]:
    return set(_SERIES.findall(expr))


def test_one_panel_per_live_series_and_no_panel_for_a_series_that_does_not_exist() -> None:
    panels = _dashboard()["panels"]
    per_panel = [set().union(*(_series(t["expr"]) for t in p["targets"])) for p in panels]
    assert all(len(found) == 1 for found in per_panel), per_panel  # one series per panel
    assert sorted(s for (s,) in per_panel) == sorted(EXPORTED)
    assert len({p["id"] for p in panels}) == len(panels)
    assert len({p["title"] for p in panels}) == len(panels)


def test_queries_filter_by_the_live_tags_of_the_templated_sweep_and_trial() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for tag in ("sweep", "trial"):
        assert tag in m.LIVE_TAGS
        assert variables[tag]["type"] == "query"
        assert f", {tag})" in variables[tag]["definition"]  # label_values(<series>, <tag>)
        assert _series(variables[tag]["definition"]) <= set(EXPORTED)
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert 'sweep=~"$sweep"' in target["expr"] and 'trial=~"$trial"' in target["expr"], target["expr"]
            # Legends and aggregations name only labels the metrics carry.
            for label in re.findall(r"\{\{(\w+)\}\}", target.get("legendFormat", "")):
                assert label in m.LIVE_TAGS, (panel["title"], label)
            for group in re.findall(r"by \(([^)]*)\)", target["expr"]):
                assert {g.strip() for g in group.split(",")} <= set(m.LIVE_TAGS), (panel["title"], group)


def test_panels_tile_the_grid_without_overlapping() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in _dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24  # Grafana's grid is 24 columns wide
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine


def test_the_kuberay_head_embeds_grafana_and_queries_prometheus() -> None:
    (cluster,) = [d for d in yaml.safe_load_all((REPO / "infra" / "k8s" / "raycluster.yaml").read_text()) if d]
    (head,) = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in head["env"]}
    # The dashboard reads these three on the head (Ray's "Embedding Grafana visualizations" settings).
    assert re.fullmatch(r"http://[a-z0-9.-]+\.svc:\d+", env["RAY_GRAFANA_HOST"])
    assert re.fullmatch(r"http://[a-z0-9.-]+\.svc:\d+", env["RAY_PROMETHEUS_HOST"])
    assert env["RAY_GRAFANA_IFRAME_HOST"] == "http://127.0.0.1:3000"  # the port-forward docs/cluster.md opens
    assert "RAY_GRAFANA_IFRAME_HOST" in (REPO / "docs" / "cluster.md").read_text(encoding="utf-8")
    assert "infra/grafana/resnet-orch.json" in (REPO / "docs" / "cluster.md").read_text(encoding="utf-8")
