"""The Grafana dashboards and the alerts of otel-ml against the real Prometheus, after demo traffic.

Without the stack (structure only):

* the JSON files in ``collector-config/dashboards/`` are exactly ``build_dashboards.py``'s output;
* each is a Grafana dashboard of schemaVersion 39 with unique uid and panel ids, panels inside the
  24-column grid, every query on the ``${datasource}`` variable (default: the ``DS_PROMETHEUS`` input), and
  every ``$variable`` a query uses defined in its templating.

Through the stack (marker ``e2e``): ``collector-config/dashboards/demo_traffic.py`` runs under
``opentelemetry-instrument`` (a Flask predict service on the breast-cancer data, pickled next to its
baseline: healthy requests with outcomes, rejected requests, model errors, missing values, then a drifted
segment), with its own model version and deployment environment; then

* every template variable query resolves to the demo's model, version and environment;
* EVERY panel query of the four dashboards, with the variables substituted (``$__rate_interval`` = 1m,
  ``$__range`` = the traffic's duration plus a minute, ``window`` = 10m and 1h), returns data from
  Prometheus at the end of the traffic;
* the drift alerts fire in Prometheus (``/api/v1/alerts``, state ``firing``) for the demo's model: a copy of
  the drift alerts of ``ml-alerts.rules.yml`` with ``for: 5s`` (and restricted to the demo's model version)
  is loaded for the test next to the production rule files, then removed; the dashboards' alert annotation
  query then returns the firing alerts.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from .conftest import PROMETHEUS, ROOT, instrumented_env, launcher, prom_value, unique_service, wait_for

DASHBOARD_DIR = ROOT / "collector-config" / "dashboards"
DEMO = DASHBOARD_DIR / "demo_traffic.py"
VARIABLE = re.compile(r"\$\{?(\w+)\}?")
GRAFANA_BUILTINS = {"__rate_interval", "__range", "__interval"}
DRIFT_ALERTS = ("MLFeatureDrift", "MLPredictionDrift", "MLFleetFeatureDrift", "MLFleetPredictionDrift",
                "MLFleetDatasetDrift")


def _builder():
    spec = importlib.util.spec_from_file_location("build_dashboards", DASHBOARD_DIR / "build_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILDER = _builder()
DASHBOARDS = {name: json.loads((DASHBOARD_DIR / name).read_text()) for name in BUILDER.DASHBOARDS}


def _queries(board: dict) -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every Prometheus annotation of a dashboard."""
    out = [(f'{p["title"]} [{t["refId"]}]', t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    out += [(f'annotation {a["name"]}', a["expr"]) for a in board["annotations"]["list"] if "expr" in a]
    return out


# ------------------------------------------------------------------------------------------------------
# structure
# ------------------------------------------------------------------------------------------------------
def test_json_files_are_the_builders_output():
    for name, build in BUILDER.DASHBOARDS.items():
        assert (DASHBOARD_DIR / name).read_text() == BUILDER.render(build), f"{name}: run build_dashboards.py"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name):
    board = DASHBOARDS[name]
    assert board["schemaVersion"] == 39
    assert board["uid"].startswith("otel-ml-") and len(board["uid"]) <= 40
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    assert {"model", "version", "environment"} <= set(variables)
    assert "ml_model_name" in variables["model"]["query"] and "deployment_environment_name" in variables[
        "environment"]["query"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"] and t["expr"].strip()
    for where, expr in _queries(board) + [(v["name"], v["query"]) for v in variables.values() if v["type"] == "query"]:
        undefined = set(VARIABLE.findall(expr)) - set(variables) - GRAFANA_BUILTINS
        assert not undefined, f"{where}: undefined variables {undefined}"
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), where


def test_other_dashboards_are_linked_by_tag():
    for board in DASHBOARDS.values():
        assert "otel-ml" in board["tags"]
        assert board["links"][0]["tags"] == ["otel-ml"] and board["links"][0]["includeVars"]


# ------------------------------------------------------------------------------------------------------
# through the stack
# ------------------------------------------------------------------------------------------------------
def _get(path: str, **params) -> dict:
    body = requests.get(f"{PROMETHEUS}{path}", params=params, timeout=30).json()
    assert body.get("status") == "success", body
    return body["data"]


def _install_drift_alert_copy(run: str, version: str) -> Path:
    """Copies of the drift alerts, ``for: 5s`` and restricted to ``version``, in a rule file Prometheus loads."""
    config_file = Path(_get("/api/v1/status/flags")["config.file"])
    loaded = {r["name"]: r for g in _get("/api/v1/rules")["groups"] for r in g["rules"] if r["type"] == "alerting"}
    missing = [a for a in DRIFT_ALERTS if a not in loaded]
    assert not missing, f"Prometheus has not loaded {missing} (collector-config/prometheus/ml-alerts.rules.yml)"
    only = f'label_replace(vector(1), "ml_model_version", "{version}", "", "")'
    rules = [{"alert": name, "expr": f"({loaded[name]['query']}) and on (ml_model_version) {only}", "for": "5s",
              "labels": {**loaded[name]["labels"], "e2e_run": run}, "annotations": loaded[name]["annotations"]}
             for name in DRIFT_ALERTS]
    path = config_file.parent / f"e2e-{run}.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": f"otel-ml-e2e-{run}", "interval": "5s", "rules": rules}]},
                               indent=1))  # JSON is YAML
    requests.post(f"{PROMETHEUS}/-/reload", timeout=30).raise_for_status()
    wait_for(lambda: any(g["name"] == f"otel-ml-e2e-{run}" for g in _get("/api/v1/rules")["groups"]),
             timeout=30, what="the test copy of the drift alerts loaded")
    return path


@pytest.fixture(scope="module")
def demo(stack, tmp_path_factory):
    run = uuid.uuid4().hex[:8]
    version, environment, service = f"demo-{run}", f"e2e-{run}", unique_service("dashboards")
    workdir = tmp_path_factory.mktemp("dashboards")
    prepared = subprocess.run([sys.executable, str(DEMO), "prepare", str(workdir)], capture_output=True, text=True,
                              timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    override = _install_drift_alert_copy(run, version)
    try:
        env = instrumented_env(service, OTEL_ML_MODEL_VERSION=version, OTEL_ML_DRIFT_WINDOW_ROWS="200",
                               OTEL_RESOURCE_ATTRIBUTES=f"deployment.environment.name={environment}")
        start = time.time()
        served = subprocess.run([*launcher(), sys.executable, str(DEMO), "serve", str(workdir), "--seconds", "20"],
                                env=env, cwd=workdir, capture_output=True, text=True, timeout=300)
        end = time.time()
        assert served.returncode == 0, served.stderr[-3000:]
        sent = json.loads(served.stdout.strip().splitlines()[-1])
        selector = f'ml_model_version="{version}", deployment_environment_name="{environment}"'
        wait_for(lambda: prom_value(f"sum(ml_input_rows_total{{{selector}}})") == sent["rows"] or None,
                 what="the demo's final row count in Prometheus")
        arrived = time.time()

        def rules_evaluated_after_arrival():
            at = prom_value(f'min(timestamp(ml:fleet_drift_psi{{{selector}}}))')
            return at if at is not None and at >= arrived else None

        # panels are queried at the first rule evaluation over all the demo's data (the fleet panels need it;
        # the rate panels need it less than a rate window after the traffic)
        at = wait_for(rules_evaluated_after_arrival, timeout=60, what="the fleet recording rules over the demo's data")
        yield {"run": run, "version": version, "environment": environment, "model": "breast_cancer",
               "sent": sent, "start": start, "end": at + 1, "traffic_end": end, "selector": selector}
    finally:
        override.unlink(missing_ok=True)
        requests.post(f"{PROMETHEUS}/-/reload", timeout=30)


def _values(demo: dict, window: str) -> dict[str, str]:
    duration = int(demo["traffic_end"] - demo["start"]) + 60
    return {"model": demo["model"], "version": demo["version"], "environment": demo["environment"],
            "window": window, "feature": "mean radius", "datasource": "prometheus",
            "__rate_interval": "1m", "__interval": "15s", "__range": f"{duration}s"}


def _substitute(expr: str, values: dict[str, str]) -> str:
    out = VARIABLE.sub(lambda m: values[m.group(1)], expr)
    assert "$" not in out, out
    return out


@pytest.mark.e2e
def test_demo_counts_arrive_exactly(demo):
    """What the panels are computed from is what the demo did: rows, rejects, model errors, missing, outcomes."""
    s, sent = demo["selector"], demo["sent"]
    assert prom_value(f"sum(ml_input_rows_total{{{s}}})") == sent["rows"]
    assert prom_value(f"sum(ml_input_errors_total{{{s}}})") == sent["rejected"]
    assert prom_value(f'sum(ml_operation_duration_seconds_count{{{s}, error_type!=""}})') == sent["model_errors"]
    assert prom_value(f"sum(ml_input_missing_total{{{s}}})") == sent["missing_values"]
    assert prom_value(f"sum(ml_outcome_count_total{{{s}}})") == sent["outcomes"]
    assert prom_value(f"count(count by (error_type) (ml_input_errors_total{{{s}}}))") == 3


@pytest.mark.e2e
def test_drift_alerts_fire_for_drifted_traffic(demo):
    def firing() -> dict[str, dict]:
        alerts = _get("/api/v1/alerts")["alerts"]
        return {a["labels"]["alertname"]: a for a in alerts
                if a["labels"].get("e2e_run") == demo["run"] and a["state"] == "firing"}

    wanted = {"MLFeatureDrift", "MLFleetFeatureDrift"}
    fired = wait_for(lambda: (lambda f: f if wanted <= set(f) else None)(firing()), timeout=90,
                     what=f"{sorted(wanted)} firing for the demo's model")
    print("firing:", sorted(fired))
    alert = fired["MLFeatureDrift"]
    assert alert["labels"]["ml_model_name"] == demo["model"] and alert["labels"]["severity"] == "warning"
    assert alert["labels"]["ml_feature_name"] in alert["annotations"]["summary"]
    assert float(alert["value"]) > 0.1
    fleet = fired["MLFleetFeatureDrift"]
    assert fleet["labels"]["window"] == "1h" and fleet["labels"]["scope"] == "fleet"
    # the dashboards' alert annotation query shows them
    for board in DASHBOARDS.values():
        (annotation,) = [a for a in board["annotations"]["list"] if "expr" in a]
        expr = _substitute(annotation["expr"], _values(demo, "1h"))
        result = _get("/api/v1/query", query=expr)["result"]
        assert {r["metric"]["alertname"] for r in result} >= wanted


@pytest.mark.e2e
def test_template_variables_resolve_to_the_demo(demo):
    for board in DASHBOARDS.values():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
            assert m, variable["query"]
            match, label = m.groups()
            match = _substitute(match, _values(demo, "10m"))
            found = _get(f"/api/v1/label/{label}/values", **{"match[]": match, "start": demo["start"] - 60,
                                                              "end": time.time()})
            expected = {"model": demo["model"], "version": demo["version"], "environment": demo["environment"],
                        "feature": "mean radius"}[variable["name"]]
            assert expected in found, (variable["name"], found)


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_query_returns_data(demo, name):
    board = DASHBOARDS[name]
    windows = ["10m", "1h"] if any(v["name"] == "window" for v in board["templating"]["list"]) else ["1h"]
    empty, checked = [], 0
    for window in windows:
        for where, expr in _queries(board):
            if where.startswith("annotation"):
                continue  # checked once the alerts fire (test_drift_alerts_fire_for_drifted_traffic)
            query = _substitute(expr, _values(demo, window))
            body = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": query, "time": demo["end"]},
                                timeout=30).json()
            assert body.get("status") == "success", (where, query, body)
            result = body["data"]["result"]
            values = [r["value"][1] for r in result] if isinstance(result, list) else [result[1]]
            checked += 1
            if not values or all(v in ("NaN", "+Inf", "-Inf") for v in values):
                empty.append(f"{where} (window {window}): {query}")
    print(f"{name}: {checked} queries, all with data" if not empty else "")
    assert not empty, "panels without data:\n" + "\n".join(empty)

