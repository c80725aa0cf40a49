"""Build the otel-ml Grafana dashboards (the JSON files next to this script) from one description.

    python collector-config/dashboards/build_dashboards.py           # rewrite the JSON files
    python collector-config/dashboards/build_dashboards.py --check   # exit 1 when a file is not up to date

The JSON files are generated, never edited by hand: ``tests/e2e/test_dashboards.py`` checks that they
equal this script's output, that their structure is sound, and runs every panel's PromQL (and every
template variable query) against the real Prometheus after demo traffic, asserting each returns data.

Conventions shared by every dashboard (Grafana 10+, ``schemaVersion`` 39):

* data source: the template variable ``datasource`` (type prometheus); its default is the import input
  ``DS_PROMETHEUS`` (``__inputs``), so the files work both imported through the UI and provisioned;
* template variables ``model``, ``version``, ``environment`` (multi-value, "All" = ``.*``) and, on the
  drift dashboards, ``window`` (the fleet rules' window, ``10m`` or ``1h``);
* every query selects ``ml_model_name=~"$model", ml_model_version=~"$version",
  deployment_environment_name=~"$environment"`` (``deployment_environment_name`` is the resource attribute
  ``deployment.environment.name`` as the gateway's remote write labels it);
* inference calls are ``ml_operation_name=~"predict|predict_proba|predict_log_proba|decision_function"``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
S = 'ml_model_name=~"$model", ml_model_version=~"$version", deployment_environment_name=~"$environment"'
INFER = 'ml_operation_name=~"predict|predict_proba|predict_log_proba|decision_function"'
L3 = "ml_model_name, ml_model_version, deployment_environment_name"
SCORE = "__prediction_score__"
RATE = "$__rate_interval"
PSI_STEPS = [("green", None), ("yellow", 0.1), ("red", 0.25)]


# ----------------------------------------------------------------------------------------------------
# panels
# ----------------------------------------------------------------------------------------------------
def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str = "time_series") -> dict:
    return {"datasource": DS, "editorMode": "code", "expr": expr, "format": fmt, "instant": instant,
            "range": not instant, "legendFormat": legend or "__auto", "refId": ref}


def targets(*specs: tuple[str, str], instant: bool = False, fmt: str = "time_series") -> list[dict]:
    return [target(expr, legend, chr(ord("A") + i), instant, fmt) for i, (expr, legend) in enumerate(specs)]


def thresholds(steps: list[tuple[str, float | None]]) -> dict:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def _panel(kind: str, title: str, description: str, tgts: list[dict], width: int, height: int, **extra: Any) -> dict:
    return {"type": kind, "title": title, "description": description, "datasource": DS, "targets": tgts,
            "_size": (width, height), **extra}


def timeseries(title: str, description: str, tgts: list[dict], unit: str = "short", width: int = 12,
               height: int = 8, stack: str | None = None, max_: float | None = None,
               steps: list[tuple[str, float | None]] | None = None) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False,
              "stacking": {"mode": stack or "none", "group": "A"},
              "thresholdsStyle": {"mode": "line" if steps else "off"}}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"},
                                "thresholds": thresholds(steps or [("green", None)])}
    if max_ is not None:
        defaults.update(min=0, max=max_)
    return _panel("timeseries", title, description, tgts, width, height,
                  fieldConfig={"defaults": defaults, "overrides": []},
                  options={"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                           "tooltip": {"mode": "multi", "sort": "desc"}})


def stat(title: str, description: str, tgts: list[dict], unit: str = "short", width: int = 4, height: int = 4,
         steps: list[tuple[str, float | None]] | None = None, decimals: int | None = None) -> dict:
    defaults: dict[str, Any] = {"unit": unit, "color": {"mode": "thresholds"},
                                "thresholds": thresholds(steps or [("green", None)])}
    if decimals is not None:
        defaults["decimals"] = decimals
    return _panel("stat", title, description, tgts, width, height,
                  fieldConfig={"defaults": defaults, "overrides": []},
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                           "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
                           "orientation": "auto", "textMode": "auto"})


def table(title: str, description: str, tgts: list[dict], unit: str = "short", width: int = 12, height: int = 8,
          rename: dict[str, str] | None = None, sort_by: str | None = None,
          steps: list[tuple[str, float | None]] | None = None) -> dict:
    """Instant queries in table format, merged into one table on their common labels."""
    transformations: list[dict] = [{"id": "merge", "options": {}}] if len(tgts) > 1 else []
    exclude = {"Time": True, "__name__": True}
    transformations.append({"id": "organize", "options": {"excludeByName": exclude,
                                                          "renameByName": rename or {}}})
    options: dict[str, Any] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    if sort_by:
        options["sortBy"] = [{"displayName": sort_by, "desc": True}]
    defaults: dict[str, Any] = {"unit": unit, "custom": {"align": "auto", "cellOptions": {"type": "auto"}},
                                "thresholds": thresholds(steps or [("green", None)])}
    if steps:
        defaults["custom"]["cellOptions"] = {"type": "color-background", "mode": "basic"}
        defaults["color"] = {"mode": "thresholds"}
    return _panel("table", title, description, tgts, width, height, transformations=transformations,
                  fieldConfig={"defaults": defaults, "overrides": []}, options=options)


def heatmap(title: str, description: str, tgts: list[dict], width: int = 12, height: int = 8) -> dict:
    """Prometheus histogram buckets (format heatmap: Grafana de-accumulates ``le``) over time."""
    return _panel("heatmap", title, description, tgts, width, height,
                  fieldConfig={"defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False},
                                                       "scaleDistribution": {"type": "linear"}}},
                               "overrides": []},
                  options={"calculate": False, "cellGap": 1, "yAxis": {"axisPlacement": "left", "unit": "none"},
                           "rowsFrame": {"layout": "auto"},
                           "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5,
                                     "fill": "dark-orange", "reverse": False},
                           "cellValues": {"unit": "short"}, "filterValues": {"le": 1e-9},
                           "legend": {"show": True}, "tooltip": {"mode": "single", "yHistogram": True},
                           "exemplars": {"color": "rgba(255,0,255,0.7)"}})


def status_history(title: str, description: str, tgts: list[dict], width: int = 24, height: int = 10,
                   steps: list[tuple[str, float | None]] = PSI_STEPS) -> dict:
    """One row per series (feature), coloured by thresholds: a heat map of a score over time."""
    return _panel("status-history", title, description, tgts, width, height,
                  fieldConfig={"defaults": {"color": {"mode": "thresholds"}, "thresholds": thresholds(steps),
                                            "decimals": 3, "custom": {"lineWidth": 0, "fillOpacity": 80}},
                               "overrides": []},
                  options={"showValue": "never", "rowHeight": 0.9, "colWidth": 0.9,
                           "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                           "tooltip": {"mode": "single", "sort": "none"}})


def bargauge(title: str, description: str, tgts: list[dict], unit: str = "short", width: int = 12,
             height: int = 8, max_: float | None = None) -> dict:
    defaults: dict[str, Any] = {"unit": unit, "color": {"mode": "continuous-BlYlRd"},
                                "thresholds": thresholds([("green", None)])}
    if max_ is not None:
        defaults.update(min=0, max=max_)
    return _panel("bargauge", title, description, tgts, width, height,
                  fieldConfig={"defaults": defaults, "overrides": []},
                  options={"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                           "valueMode": "color", "namePlacement": "auto", "sizing": "auto", "minVizHeight": 10,
                           "minVizWidth": 0, "maxVizHeight": 300,
                           "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}})


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def layout(panels: list[dict]) -> list[dict]:
    """Assign ids and gridPos left to right, top to bottom (24 columns)."""
    x = y = line_height = 0
    out = []
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_size")
        if x + w > 24:
            x, y, line_height = 0, y + line_height, 0
        p = {"id": i, **p, "gridPos": {"h": h, "w": w, "x": x, "y": y}}
        x += w
        line_height = max(line_height, h)
        if w == 24:
            x, y, line_height = 0, y + h, 0
        out.append(p)
    return out


# ----------------------------------------------------------------------------------------------------
# dashboards
# ----------------------------------------------------------------------------------------------------
def variable(name: str, label: str, query: str, multi: bool = True) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS, "query": query, "definition": query,
            "refresh": 2, "includeAll": True, "multi": multi, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "regex": "",
            "sort": 1, "hide": 0, "skipUrlSync": False}


def variables(window: bool = False) -> list[dict]:
    out = [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {"selected": False, "text": "${DS_PROMETHEUS}", "value": "${DS_PROMETHEUS}"},
         "options": [], "refresh": 1, "regex": "", "hide": 0, "includeAll": False, "multi": False,
         "skipUrlSync": False},
        variable("model", "Model", "label_values(ml_input_rows_total, ml_model_name)"),
        variable("version", "Version", 'label_values(ml_input_rows_total{ml_model_name=~"$model"}, ml_model_version)'),
        variable("environment", "Environment",
                 'label_values(ml_input_rows_total{ml_model_name=~"$model"}, deployment_environment_name)'),
    ]
    if window:
        out.append({"name": "window", "label": "Fleet window", "type": "custom", "query": "10m,1h",
                    "current": {"selected": True, "text": "1h", "value": "1h"},
                    "options": [{"selected": w == "1h", "text": w, "value": w} for w in ("10m", "1h")],
                    "includeAll": False, "multi": False, "hide": 0, "skipUrlSync": False,
                    "description": "Window of the fleet recording rules (collector-config/prometheus/ml.rules.yml)"})
    return out


def dashboard(uid: str, title: str, description: str, panels: list[dict], window: bool = False) -> dict:
    used = sorted({p["type"] for p in panels if p["type"] != "row"})
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus",
                      "description": "Prometheus with otel-ml's metrics and the rules of collector-config/prometheus",
                      "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                       {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}]
        + [{"type": "panel", "id": t, "name": t, "version": ""} for t in used],
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
             "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
            {"datasource": DS, "enable": True, "hide": False, "iconColor": "red", "name": "otel-ml alerts",
             "expr": f'ALERTS{{alertstate="firing", {S}}}', "step": "1m", "titleFormat": "{{alertname}}",
             "textFormat": "{{ml_model_name}} {{ml_model_version}} {{ml_feature_name}}",
             "tagKeys": "severity,alertname", "useValueForTime": False},
        ]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [{"asDropdown": True, "icon": "external link", "includeVars": True, "keepTime": True,
                   "tags": ["otel-ml"], "targetBlank": False, "title": "otel-ml dashboards", "type": "dashboards"}],
        "panels": layout(panels),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["otel-ml", "ml", "opentelemetry"],
        "templating": {"list": variables(window)},
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


def service_health() -> dict:
    calls = f"ml_operation_duration_seconds_count{{{S}, {INFER}}}"
    errors = f'ml_operation_duration_seconds_count{{{S}, {INFER}, error_type!=""}}'

    def quantile(q: float) -> tuple[str, str]:
        return (f"histogram_quantile({q}, sum by (le, ml_model_name, ml_operation_name) "
                f"(rate(ml_operation_duration_seconds_bucket{{{S}, {INFER}}}[{RATE}])))",
                f"p{int(q * 100)} {{{{ml_model_name}}}} {{{{ml_operation_name}}}}")

    panels = [
        row("Traffic"),
        stat("Model calls / s", "Inference calls per second (ml.operation.duration count), all replicas.",
             targets((f"sum(rate({calls}[{RATE}]))", "calls/s")), unit="reqps"),
        stat("Rows / s", "Rows scored per second (ml.input.rows): the throughput.",
             targets((f"sum(rate(ml_input_rows_total{{{S}, {INFER}}}[{RATE}]))", "rows/s")), unit="short"),
        stat("Error share", "Share of inference calls that raised (error.type set) over the rate window.",
             targets((f"(sum(rate({errors}[{RATE}])) or vector(0)) / sum(rate({calls}[{RATE}]))", "errors")),
             unit="percentunit", steps=[("green", None), ("orange", 0.01), ("red", 0.05)]),
        stat("Rejected requests / s", "Requests answered 4xx by predict routes (ml.input.errors).",
             targets((f"sum(rate(ml_input_errors_total{{{S}}}[{RATE}])) or vector(0)", "rejected/s")), unit="reqps",
             steps=[("green", None), ("orange", 0.1)]),
        stat("Replicas", "Processes exporting this model's metrics (distinct service.instance.id).",
             targets((f"count(count by (service_instance_id) (ml_input_rows_total{{{S}}}))", "replicas"))),
        stat("Instrumentation errors", "otel-ml's own failures (never raised into the app); should stay 0.",
             targets((f"sum(increase(ml_instrumentation_errors_total{{{S}}}[$__range])) or vector(0)", "errors")),
             steps=[("green", None), ("red", 1)]),
        timeseries("HTTP requests by route and status",
                   "Server spans of predict routes (span metrics of the gateway), by span name and status.",
                   targets((f'sum by (span_name, status_code) (rate(traces_span_metrics_calls_total{{{S}, '
                            f'span_kind="SPAN_KIND_SERVER"}}[{RATE}]))', "{{span_name}} {{status_code}}")),
                   unit="reqps"),
        timeseries("Model calls by operation", "Inference calls per second by model, version and operation.",
                   targets((f"sum by (ml_model_name, ml_model_version, ml_operation_name) (rate({calls}[{RATE}]))",
                            "{{ml_model_name}} {{ml_model_version}} {{ml_operation_name}}")), unit="reqps"),
        row("Latency"),
        timeseries("Model latency p50 / p95 / p99",
                   "Quantiles of ml.operation.duration (histogram, 50 µs to 10 s buckets). Alert: "
                   "MLModelHighLatency (p95 > 500 ms for 10 m).",
                   targets(quantile(0.5), quantile(0.95), quantile(0.99)), unit="s",
                   steps=[("green", None), ("red", 0.5)]),
        timeseries("HTTP latency p95 (server spans)",
                   "p95 of the predict routes' server spans (span metrics, milliseconds), model included.",
                   targets((f"histogram_quantile(0.95, sum by (le, span_name) (rate("
                            f"traces_span_metrics_duration_milliseconds_bucket{{{S}, span_kind=\"SPAN_KIND_SERVER\"}}"
                            f"[{RATE}])))", "p95 {{span_name}}")), unit="ms"),
        row("Errors"),
        timeseries("Errors by error.type",
                   "Model exceptions (model spans' error.type) and rejected requests (ml.input.errors: "
                   "invalid_json, status code or the app's reason). Alerts: MLModelHighErrorRate, MLInputRejectRate.",
                   targets((f"sum by (error_type) (rate({errors}[{RATE}]))", "model: {{error_type}}"),
                           (f"sum by (error_type) (rate(ml_input_errors_total{{{S}}}[{RATE}]))",
                            "rejected: {{error_type}}")), unit="reqps"),
        timeseries("Error share by model",
                   "Share of inference calls that raised, per model and version.",
                   targets((f"(sum by (ml_model_name, ml_model_version) (rate({errors}[{RATE}])) or sum by "
                            f"(ml_model_name, ml_model_version) (rate({calls}[{RATE}])) * 0) / sum by "
                            f"(ml_model_name, ml_model_version) (rate({calls}[{RATE}]))",
                            "{{ml_model_name}} {{ml_model_version}}")), unit="percentunit", max_=1,
                   steps=[("green", None), ("red", 0.05)]),
        row("Saturation"),
        timeseries("Batch size", "Rows per call: mean and p95 (ml.input.batch.size).",
                   targets((f"sum by (ml_model_name) (rate(ml_input_batch_size_sum{{{S}, {INFER}}}[{RATE}])) / "
                            f"sum by (ml_model_name) (rate(ml_input_batch_size_count{{{S}, {INFER}}}[{RATE}]))",
                            "mean {{ml_model_name}}"),
                           (f"histogram_quantile(0.95, sum by (le, ml_model_name) (rate(ml_input_batch_size_bucket"
                            f"{{{S}, {INFER}}}[{RATE}])))", "p95 {{ml_model_name}}")), unit="short", width=8),
        timeseries("Rows / s by replica", "Throughput per process (service.instance.id): uneven load shows here.",
                   targets((f"sum by (service_instance_id) (rate(ml_input_rows_total{{{S}, {INFER}}}[{RATE}]))",
                            "{{service_instance_id}}")), unit="short", width=8),
        timeseries("Busy model time (in-flight proxy)",
                   "Seconds spent in model calls per second, per replica: the mean number of calls in flight "
                   "(Little's law). Near the number of worker threads or cores means saturation.",
                   targets((f"sum by (service_instance_id) (rate(ml_operation_duration_seconds_sum{{{S}, {INFER}}}"
                            f"[{RATE}]))", "{{service_instance_id}}")), unit="short", width=8),
    ]
    return dashboard("otel-ml-service-health", "otel-ml / Service health",
                     "Traffic, latency, errors and saturation of scikit-learn models instrumented by otel-ml.", panels)


def data_quality() -> dict:
    fleet = f'{S}, window="$window"'
    panels = [
        row("Input quality"),
        timeseries("Missing values by feature", "Missing or non-finite input values per second (ml.input.missing).",
                   targets((f"sum by (ml_feature_name) (rate(ml_input_missing_total{{{S}}}[{RATE}]))",
                            "{{ml_feature_name}}")), unit="short"),
        bargauge("Missing share by feature (time range)",
                 "Missing values / rows scored over the dashboard's time range, per feature.",
                 targets((f"sum by (ml_feature_name) (increase(ml_input_missing_total{{{S}}}[$__range])) / "
                          f"scalar(sum(increase(ml_input_rows_total{{{S}, {INFER}}}[$__range])))",
                          "{{ml_feature_name}}"), instant=True), unit="percentunit", max_=1),
        timeseries("Violations by check",
                   "Input violations of the baseline per second by check (ml.validation.violations): missing / extra "
                   "column, type mismatch, out of range, unseen category, completeness, non-finite. Alert: "
                   "MLInputViolationRate (> 0.05 per row).",
                   targets((f"sum by (ml_validation_check) (rate(ml_validation_violations_total{{{S}}}[{RATE}]))",
                            "{{ml_validation_check}}")), unit="short"),
        table("Violations by feature and check (time range)", "Violations over the dashboard's time range.",
              targets((f"sum by (ml_feature_name, ml_validation_check) (increase(ml_validation_violations_total"
                       f"{{{S}}}[$__range])) > 0", ""), instant=True, fmt="table"),
              rename={"Value": "violations", "ml_feature_name": "feature", "ml_validation_check": "check"},
              sort_by="violations", unit="none"),
        row("Drift in each replica (latest closed window)"),
        status_history("Drift score (PSI) by feature",
                       "PSI of each feature's latest closed drift window against the baseline (worst replica): "
                       "green < 0.1 <= yellow < 0.25 <= red. Windows close every OTEL_ML_DRIFT_WINDOW_ROWS rows or "
                       "OTEL_ML_DRIFT_WINDOW_SECONDS. Alerts: MLFeatureDrift, MLPredictionDrift.",
                       targets((f'max by (ml_feature_name) (ml_drift_score{{{S}, ml_drift_method="psi"}})',
                                "{{ml_feature_name}}"))),
        table("Drift by feature and method (latest window)",
              "Every method of the latest window, worst replica: PSI, Jensen-Shannon, normalised Wasserstein "
              "(alert at 0.1), KS statistic and chi-square (reported; their p-values are not alerted on).",
              targets((f"max by (ml_feature_name, ml_drift_method) (ml_drift_score{{{S}}})", ""),
                      instant=True, fmt="table"),
              rename={"Value": "score", "ml_feature_name": "feature", "ml_drift_method": "method"},
              sort_by="score", unit="none", steps=PSI_STEPS),
        timeseries("Drift share",
                   "Share of drifted features in each replica's latest window (ml.drift.share: PSI, JS or "
                   "Wasserstein over its threshold) and fleet-wide (PSI > 0.1 over the fleet window).",
                   targets((f"max by (service_instance_id) (ml_drift_share{{{S}}})", "replica {{service_instance_id}}"),
                           (f"max by (ml_model_name, ml_model_version) (ml:fleet_drift_share{{{fleet}}})",
                            "fleet {{ml_model_name}} {{ml_model_version}}")), unit="percentunit", max_=1,
                   steps=[("green", None), ("red", 0.5)]),
        row("Fleet drift (all replicas together, recording rules)"),
        table("Fleet PSI by feature",
              "PSI of each feature over the fleet window, on the bin counts of all replicas summed "
              "(ml:fleet_drift_psi), with the rows it is computed on. Alerts: MLFleetFeatureDrift, "
              "MLFleetDatasetDrift.",
              targets((f"max by (ml_feature_name) (ml:fleet_drift_psi{{{fleet}}})", ""),
                      (f"max by (ml_feature_name) (ml:fleet_feature_rows{{{fleet}}})", ""), instant=True, fmt="table"),
              rename={"Value #A": "PSI", "Value #B": "rows", "ml_feature_name": "feature"}, sort_by="PSI",
              unit="none", steps=PSI_STEPS),
        timeseries("Fleet PSI over time", "ml:fleet_drift_psi per feature; the line marks 0.1.",
                   targets((f"max by (ml_feature_name) (ml:fleet_drift_psi{{{fleet}}})", "{{ml_feature_name}}")),
                   unit="none", steps=[("green", None), ("red", 0.1)]),
        stat("Fleet rows in window", "Rows the fleet PSI is computed on (most complete feature).",
             targets((f"max(ml:fleet_feature_rows{{{fleet}}})", "rows")), width=4),
        stat("Drifted features (fleet)", "Features with fleet PSI > 0.1.",
             targets((f'count(ml:fleet_drift_psi{{{fleet}, ml_feature_name!="{SCORE}"}} > 0.1) or vector(0)',
                      "features")), width=4, steps=[("green", None), ("orange", 1)]),
        table("Bins of a feature: fleet vs baseline",
              "Current fraction per bin over the fleet window (ml:fleet_feature_bin_fraction) next to the "
              "baseline's (ml:fleet_baseline_bin_fraction), for the feature chosen in the variable 'feature'.",
              targets((f'ml:fleet_feature_bin_fraction{{{fleet}, ml_feature_name=~"$feature"}}', ""),
                      (f'ml:fleet_baseline_bin_fraction{{{S}, ml_feature_name=~"$feature"}}', ""),
                      instant=True, fmt="table"),
              rename={"Value #A": "current", "Value #B": "baseline", "ml_bin_index": "bin",
                      "ml_feature_name": "feature"}, unit="percentunit", width=16),
    ]
    out = dashboard("otel-ml-data-quality", "otel-ml / Data quality and drift",
                    "Missing values, baseline violations, drift per replica and fleet-wide drift of otel-ml models.",
                    panels, window=True)
    out["templating"]["list"].append(variable(
        "feature", "Feature (bins table)",
        'label_values(ml:fleet_feature_bin_fraction{ml_model_name=~"$model", ml_model_version=~"$version"}, '
        "ml_feature_name)", multi=False))
    return out


def model_performance() -> dict:
    fleet = f'{S}, window="$window"'
    perf = f"ml_performance{{{S}}}"
    panels = [
        row("Predictions"),
        heatmap("Prediction score distribution",
                "Scores per bucket over time (ml.prediction.score: positive-class probability, top-class "
                "probability, decision value or regression output; buckets 0.05 to 0.95).",
                targets((f"sum by (le) (increase(ml_prediction_score_bucket{{{S}}}[{RATE}]))", "{{le}}"),
                        fmt="heatmap")),
        bargauge("Score buckets (time range)", "Predictions per score bucket over the dashboard's time range.",
                 targets((f"sum by (le) (increase(ml_prediction_score_bucket{{{S}}}[$__range]))", "{{le}}"),
                         instant=True, fmt="heatmap")),
        timeseries("Predicted class shares", "Share of predictions per label (ml.prediction.count). Alert: "
                   "MLPredictionClassCollapse.",
                   targets((f"sum by (ml_prediction_label) (rate(ml_prediction_count_total{{{S}}}[{RATE}])) / "
                            f"scalar(sum(rate(ml_prediction_count_total{{{S}}}[{RATE}])))",
                            "{{ml_prediction_label}}")), unit="percentunit", stack="normal", max_=1),
        timeseries("Mean score", "Mean prediction score per model.",
                   targets((f"sum by (ml_model_name, ml_model_version) (rate(ml_prediction_score_sum{{{S}}}[{RATE}])) "
                            f"/ sum by (ml_model_name, ml_model_version) (rate(ml_prediction_score_count{{{S}}}"
                            f"[{RATE}]))", "{{ml_model_name}} {{ml_model_version}}")), unit="none"),
        timeseries("Prediction drift (PSI of scores)",
                   "PSI of the scores against the baseline's: latest window of the worst replica (ml_drift_score) "
                   "and fleet-wide (ml:fleet_drift_psi, predict_proba scores). Alerts: MLPredictionDrift, "
                   "MLFleetPredictionDrift, MLPredictionScoreCollapse.",
                   targets((f'max by (ml_model_name, ml_model_version) (ml_drift_score{{{S}, '
                            f'ml_feature_name="{SCORE}", ml_drift_method="psi"}})',
                            "replica max {{ml_model_name}} {{ml_model_version}}"),
                           (f'ml:fleet_drift_psi{{{fleet}, ml_feature_name="{SCORE}"}}',
                            "fleet {{ml_model_name}} {{ml_model_version}}")), unit="none",
                   steps=[("green", None), ("red", 0.1)]),
        table("Score bins: fleet vs baseline",
              "Fraction of scores per bin over the fleet window next to the baseline's (bin i covers "
              "(0.05 i, 0.05 (i+1)]).",
              targets((f'ml:fleet_feature_bin_fraction{{{fleet}, ml_feature_name="{SCORE}"}}', ""),
                      (f'ml:fleet_baseline_bin_fraction{{{S}, ml_feature_name="{SCORE}"}}', ""),
                      instant=True, fmt="table"),
              rename={"Value #A": "current", "Value #B": "baseline", "ml_bin_index": "bin"}, unit="percentunit"),
        row("Performance (outcomes joined in process)"),
        timeseries("Performance metrics",
                   "ml.performance over each replica's latest OTEL_ML_PERFORMANCE_WINDOW joined outcomes, averaged "
                   "over replicas. Alerts: MLPerformanceLow (accuracy / ROC AUC < 0.7), MLPerformanceDrop "
                   "(0.05 below an hour earlier).",
                   targets((f"avg by (ml_model_name, ml_model_version, ml_performance_metric) ({perf})",
                            "{{ml_performance_metric}} {{ml_model_name}} {{ml_model_version}}")), unit="none"),
        stat("Accuracy", "Latest accuracy (average over replicas).",
             targets((f'avg(ml_performance{{{S}, ml_performance_metric="accuracy"}})', "accuracy")), unit="percentunit",
             decimals=1, steps=[("red", None), ("orange", 0.7), ("green", 0.9)]),
        stat("ROC AUC", "Latest ROC AUC (binary and multiclass classifiers; average over replicas).",
             targets((f'avg(ml_performance{{{S}, ml_performance_metric="roc_auc"}})', "roc_auc")), unit="none",
             decimals=3, steps=[("red", None), ("orange", 0.7), ("green", 0.85)]),
        stat("Outcomes joined", "Share of outcomes that met their prediction in the same process "
             "(ml.outcome.count, ml.outcome.joined=true) over the time range.",
             targets((f'sum(increase(ml_outcome_count_total{{{S}, ml_outcome_joined="true"}}[$__range])) / '
                      f"sum(increase(ml_outcome_count_total{{{S}}}[$__range]))", "joined")), unit="percentunit",
             decimals=1),
        timeseries("Outcomes", "Outcomes recorded per second, joined in process or not (another replica's "
                   "prediction, evicted, unknown id: joined by the collector-side processor instead).",
                   targets((f"sum by (ml_outcome_joined) (rate(ml_outcome_count_total{{{S}}}[{RATE}]))",
                            "joined={{ml_outcome_joined}}"),
                           (f"sum(rate(ml_prediction_count_total{{{S}}}[{RATE}]))", "predictions")), unit="short",
                   width=12),
        stat("Outcome coverage", "Outcomes / predictions over the time range.",
             targets((f"sum(increase(ml_outcome_count_total{{{S}}}[$__range])) / "
                      f"sum(increase(ml_prediction_count_total{{{S}}}[$__range]))", "coverage")), unit="percentunit",
             decimals=1, width=12),
    ]
    return dashboard("otel-ml-model-performance", "otel-ml / Model performance",
                     "Prediction distribution, class shares, prediction drift and performance from outcomes.",
                     panels, window=True)


def fleet_overview() -> dict:
    calls = f"ml_operation_duration_seconds_count{{{S}, {INFER}}}"
    errors = f'ml_operation_duration_seconds_count{{{S}, {INFER}, error_type!=""}}'
    by = f"by ({L3})"

    def error_share(window: str) -> str:
        return (f"(sum {by} (rate({errors}[{window}])) or sum {by} (rate({calls}[{window}])) * 0) / "
                f"sum {by} (rate({calls}[{window}]))")

    panels = [
        stat("Models", "Model versions reporting.",
             targets((f"count(count by ({L3}) (ml_input_rows_total{{{S}}}))", "models"))),
        stat("Replicas", "Processes reporting (distinct service.instance.id).",
             targets((f"count(count by (service_instance_id) (ml_input_rows_total{{{S}}}))", "replicas"))),
        stat("Rows / s", "Rows scored per second, all models.",
             targets((f"sum(rate(ml_input_rows_total{{{S}, {INFER}}}[{RATE}]))", "rows/s"))),
        stat("Firing alerts", "otel-ml alerts firing now (collector-config/prometheus/ml-alerts.rules.yml).",
             targets((f'count(ALERTS{{alertstate="firing", {S}}}) or vector(0)', "alerts")),
             steps=[("green", None), ("red", 1)]),
        stat("Models with fleet drift", "Model versions whose fleet drift share (1h) is 0.5 or more.",
             targets((f'count(ml:fleet_drift_share{{{S}, window="1h"}} >= 0.5) or vector(0)', "models")),
             steps=[("green", None), ("red", 1)]),
        stat("Worst accuracy", "Lowest accuracy over model versions (in-process windows, averaged over replicas).",
             targets((f'min(avg {by} (ml_performance{{{S}, ml_performance_metric="accuracy"}}))', "accuracy")),
             unit="percentunit", decimals=1, steps=[("red", None), ("orange", 0.7), ("green", 0.9)]),
        table("Models",
              "One row per model version and environment: rows/s and error share (5 m), fleet drift share (1 h), "
              "accuracy and ROC AUC (in-process windows, averaged over replicas), replicas, firing alerts.",
              targets((f"sum {by} (rate(ml_input_rows_total{{{S}, {INFER}}}[5m]))", ""),
                      (error_share("5m"), ""),
                      (f'max {by} (ml:fleet_drift_share{{{S}, window="1h"}})', ""),
                      (f'avg {by} (ml_performance{{{S}, ml_performance_metric="accuracy"}})', ""),
                      (f'avg {by} (ml_performance{{{S}, ml_performance_metric="roc_auc"}})', ""),
                      (f"count {by} (count by ({L3}, service_instance_id) (ml_input_rows_total{{{S}}}))", ""),
                      (f'count {by} (ALERTS{{alertstate="firing", {S}}}) or count {by} (ml_input_rows_total{{{S}}}) '
                       f"* 0", ""),
                      instant=True, fmt="table"),
              rename={"Value #A": "rows/s", "Value #B": "error share", "Value #C": "drift share (fleet, 1h)",
                      "Value #D": "accuracy", "Value #E": "roc_auc", "Value #F": "replicas",
                      "Value #G": "firing alerts", "ml_model_name": "model", "ml_model_version": "version",
                      "deployment_environment_name": "environment"}, unit="none", width=24, height=8),
        timeseries("Rows / s by model", "Throughput per model version.",
                   targets((f"sum by (ml_model_name, ml_model_version) (rate(ml_input_rows_total{{{S}, {INFER}}}"
                            f"[{RATE}]))", "{{ml_model_name}} {{ml_model_version}}")), unit="short"),
        timeseries("Error share by model", "Share of inference calls that raised.",
                   targets((error_share(RATE),
                            "{{ml_model_name}} {{ml_model_version}} {{deployment_environment_name}}")),
                   unit="percentunit", max_=1, steps=[("green", None), ("red", 0.05)]),
        timeseries("Drift share by model", "Fleet drift share (PSI > 0.1, window 1h) and the worst replica's "
                   "latest-window drift share.",
                   targets((f'max by (ml_model_name, ml_model_version) (ml:fleet_drift_share{{{S}, window="1h"}})',
                            "fleet {{ml_model_name}} {{ml_model_version}}"),
                           (f"max by (ml_model_name, ml_model_version) (ml_drift_share{{{S}}})",
                            "worst replica {{ml_model_name}} {{ml_model_version}}")),
                   unit="percentunit", max_=1, steps=[("green", None), ("red", 0.5)]),
        timeseries("Performance by model", "Accuracy and ROC AUC per model version (averaged over replicas).",
                   targets((f'avg by (ml_model_name, ml_model_version, ml_performance_metric) (ml_performance{{{S}, '
                            f'ml_performance_metric=~"accuracy|roc_auc"}})',
                            "{{ml_performance_metric}} {{ml_model_name}} {{ml_model_version}}")), unit="none"),
        timeseries("Replicas by model", "Processes per model version (distinct service.instance.id).",
                   targets((f"count by (ml_model_name, ml_model_version) (count by (ml_model_name, ml_model_version, "
                            f"service_instance_id) (ml_input_rows_total{{{S}}}))",
                            "{{ml_model_name}} {{ml_model_version}}")), unit="short"),
        timeseries("Firing alerts by model", "otel-ml alerts firing, by alert and model.",
                   targets((f'count by (alertname, ml_model_name) (ALERTS{{alertstate="firing", {S}}}) or '
                            f"count by (ml_model_name) (ml_input_rows_total{{{S}}}) * 0",
                            "{{alertname}} {{ml_model_name}}")), unit="short"),
    ]
    return dashboard("otel-ml-fleet-overview", "otel-ml / Fleet overview",
                     "Every model version at a glance: throughput, errors, drift, performance, replicas, alerts.",
                     panels)


DASHBOARDS = {
    "ml-service-health.json": service_health,
    "ml-data-quality-drift.json": data_quality,
    "ml-model-performance.json": model_performance,
    "ml-fleet-overview.json": fleet_overview,
}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the otel-ml Grafana dashboards.")
    parser.add_argument("--check", action="store_true", help="exit 1 when a JSON file is not up to date")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("not up to date (run build_dashboards.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
