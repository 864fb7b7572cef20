"""raylane metrics grafana: a dashboard whose every query reads a metric raylane exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from raylane.cli import main
from raylane.grafana import dashboard, metric_names

METRICS = Path(__file__).resolve().parents[2] / "actors" / "metrics.py"


def test_every_query_reads_a_metric_raylane_exports_and_each_metric_is_shown():
    exported = set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(raylane_\w+)"', METRICS.read_text()))
    assert exported and metric_names() == exported


def test_the_dashboard_is_grafanas_json_model(capsys):
    assert main(["metrics", "grafana"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(dashboard()))
    ids = [p["id"] for p in printed["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for p in printed["panels"]:
        assert p["targets"] and all(t["expr"] and t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
        assert p["gridPos"]["w"] == 12 and p["description"]
    assert printed["templating"]["list"][0]["type"] == "datasource"


def test_the_dashboard_can_go_to_a_file(tmp_path, capsys):
    out = tmp_path / "raylane.json"
    assert main(["metrics", "grafana", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"written": str(out)}
    assert json.loads(out.read_text())["uid"] == "raylane"
