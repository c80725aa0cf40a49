"""The Prometheus rules of otel-ml (``collector-config/prometheus/*.rules.yml``), checked by promtool.

* ``promtool check rules`` passes (syntax, templates, lint) on every rule file.
* ``promtool test rules`` with synthetic series:

  - the fleet recording rules (``ml.rules.yml``) give, per model, feature and window, the PSI that
    ``otel_ml.drift.psi`` computes on the rows of the window summed over three replicas: one that existed
    before the window (counted as last value - value before the window), one that started inside it
    (counted from its first sample, which ``increase()`` would drop), one whose counter reset inside it
    (counted since the reset); with a reference bin that is empty, a current bin that is empty and a bin
    empty on both sides; the prediction-score bins rebuilt from the ``le`` buckets likewise; the drift share;
  - every alert of ``ml-alerts.rules.yml`` fires on a synthetic incident (pending, then firing after its
    ``for``) and stays quiet on healthy data.

The test files are written as JSON (valid YAML) into a temporary directory. promtool comes from
``.stack/bin`` (``scripts/build-backends.sh``); without it the tests skip, except under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from otel_ml.drift import psi
from otel_ml.semconv import SCORE_BUCKETS

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "collector-config" / "prometheus"
RECORDING = RULES_DIR / "ml.rules.yml"
ALERTING = RULES_DIR / "ml-alerts.rules.yml"
PROMTOOL = ROOT / ".stack" / "bin" / "promtool"
SCORE_FEATURE = "__prediction_score__"
LES = [f"{b:g}" for b in SCORE_BUCKETS] + ["+Inf"]


@pytest.fixture(scope="module")
def promtool() -> Path:
    if not PROMTOOL.exists():
        message = f"{PROMTOOL} missing: run scripts/build-backends.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return PROMTOOL


def run_promtool(promtool: Path, tmp_path: Path, tests: list[dict], rule_files: list[Path],
                 evaluation_interval: str = "15s") -> None:
    spec = {"rule_files": [str(p) for p in rule_files], "evaluation_interval": evaluation_interval, "tests": tests}
    path = tmp_path / "rules_test.yml"
    path.write_text(json.dumps(spec, indent=1))
    result = subprocess.run([str(promtool), "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]


def series(name: str, values: list[float | None], **labels: str) -> dict:
    """An input series; ``None`` is a missing sample (``_``)."""
    text = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{text}}}", "values": " ".join("_" if v is None else repr(float(v)) for v in values)}


def close_to(expr: str, expected: float, eval_time: str, tolerance: float = 1e-9) -> dict:
    """A promql_expr_test asserting that ``expr`` has exactly one series, within ``tolerance`` of ``expected``."""
    return {"expr": f"count(abs(({expr}) - {expected!r}) < {tolerance!r}) == count({expr})",
            "eval_time": eval_time, "exp_samples": [{"labels": "{}", "value": 1}]}


# ------------------------------------------------------------------------------------------------------
# check
# ------------------------------------------------------------------------------------------------------
def test_promtool_check_rules(promtool):
    files = sorted(RULES_DIR.glob("*.rules.yml"))
    assert RECORDING in files and ALERTING in files
    result = subprocess.run([str(promtool), "check", "rules", *map(str, files)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_score_bin_rules_follow_score_buckets():
    """Bin i of the score rules is (SCORE_BUCKETS[i-1], SCORE_BUCKETS[i]] as in Baseline.score_bin_counts."""
    text = RECORDING.read_text()
    rules = re.findall(r'ml_bin_index: "(\d+)"\n\s+expr: \|\n((?:\s+.*\n)+?)\s+- record', text)
    assert [int(i) for i, _ in rules] == list(range(len(LES)))
    for i, expr in rules:
        les = re.findall(r'le="([^"]+)"', expr)
        assert les == ([LES[0]] if i == "0" else [LES[int(i)], LES[int(i) - 1]])


# ------------------------------------------------------------------------------------------------------
# fleet PSI: three replicas against otel_ml.drift.psi
# ------------------------------------------------------------------------------------------------------
STEP = 15  # seconds between samples
EVAL_STEP = 80  # evaluate at 80 * 15 s = 20 m
MODEL = {"ml_model_name": "churn", "ml_model_version": "7", "deployment_environment_name": "prod"}
REFERENCE = {  # baseline fractions per feature; "a" has an empty reference bin, "c" a bin empty on both sides
    "a": [0.25, 0.25, 0.5, 0.0],
    "b": [0.2, 0.3, 0.5],
    "c": [0.5, 0.5, 0.0],
}


def _replicas(rng: np.random.Generator, n_bins: int, shift: int) -> dict[str, np.ndarray]:
    """Cumulative counts per replica, shape (steps + 1, n_bins), NaN where the replica exported nothing.

    r1 runs from t=0; r2 starts at step 48 (12 min); r3 runs from t=0 and restarts (counter reset, same
    instance id) at step 64 (16 min)."""
    steps = EVAL_STEP + 1
    out = {}
    for name, start, weights in (("r1", 0, None), ("r2", 48, shift), ("r3", 0, -shift)):
        p = np.ones(n_bins)
        if weights is not None:
            p[weights % n_bins] += 3.0
        rows = rng.multinomial(20, p / p.sum(), size=steps).astype(float)
        cum = np.full((steps, n_bins), np.nan)
        cum[start:] = np.cumsum(rows[start:], axis=0)
        if name == "r3":
            cum[64:] = np.cumsum(rows[64:], axis=0)
        out[name] = cum
    return out


def _window_counts(replicas: dict[str, np.ndarray], window_steps: int) -> np.ndarray:
    """Rows of the window (EVAL_STEP - window_steps, EVAL_STEP], summed over replicas, by the rules' definition.

    r1 counts last - before, r2 (started inside the window) its last value, r3 (restarted inside it, now
    below its value before the window) its last value: the rows since the restart."""
    total = 0
    for cum in replicas.values():
        last = cum[EVAL_STEP]
        before = cum[EVAL_STEP - window_steps] if EVAL_STEP - window_steps >= 0 else np.full_like(last, np.nan)
        # per bin (each bin is its own series): a reset shows as a value below the one before the window
        total = total + np.where(np.isnan(before) | (last < before), last, last - before)
    return total


def _mask(cum: np.ndarray, bin_: int) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in cum[:, bin_]]


def test_fleet_psi_equals_drift_psi_on_the_windows_rows(promtool, tmp_path):
    rng = np.random.default_rng(7)
    inputs, checks = [], []
    expected_psi: dict[tuple[str, str], float] = {}
    for f_index, (feature, reference) in enumerate(REFERENCE.items()):
        n_bins = len(reference)
        replicas = _replicas(rng, n_bins, shift=f_index + 1)
        if feature == "c":  # bin 2: no rows anywhere, reference 0 too
            replicas = {k: np.where(np.arange(n_bins) == 2, np.where(np.isnan(v), np.nan, 0.0), v)
                        for k, v in replicas.items()}
        if feature == "b":  # bin 0: rows before the 10 m window only, none inside it
            for k, v in replicas.items():
                v[40:, 0] = np.where(np.isnan(v[40:, 0]), np.nan, v[39, 0] if k == "r1" else 0.0)
        for instance, cum in replicas.items():
            for b in range(n_bins):
                inputs.append(series("ml_feature_bin_count_total", _mask(cum, b), **MODEL, job="svc",
                                     instance=instance, ml_feature_name=feature, ml_bin_index=str(b)))
                alive = [None if np.isnan(v) else reference[b] for v in cum[:, 0]]
                inputs.append(series("ml_baseline_bin_fraction", alive, **MODEL, job="svc", instance=instance,
                                     ml_feature_name=feature, ml_bin_index=str(b)))
        for window, steps in (("10m", 40), ("1h", 240)):
            counts = _window_counts(replicas, steps)
            value = float(psi(np.array(reference), counts))
            expected_psi[(feature, window)] = value
            checks.append(close_to(f'ml:fleet_drift_psi{{ml_feature_name="{feature}", window="{window}"}}',
                                   value, "20m"))
            checks.append(close_to(f'ml:fleet_feature_rows{{ml_feature_name="{feature}", window="{window}"}}',
                                   float(counts.sum()), "20m"))
    assert expected_psi[("b", "10m")] > 0.1 and expected_psi[("a", "10m")] > 0.1  # the data does drift
    for window in ("10m", "1h"):
        share = np.mean([expected_psi[(f, window)] > 0.1 for f in REFERENCE])
        checks.append(close_to(f'ml:fleet_drift_share{{window="{window}"}}', float(share), "20m"))
    checks.append({"expr": "count by (window) (ml:fleet_drift_psi)", "eval_time": "20m",
                   "exp_samples": [{"labels": '{window="10m"}', "value": 3}, {"labels": '{window="1h"}', "value": 3}]})
    run_promtool(promtool, tmp_path, [{"interval": f"{STEP}s", "input_series": inputs,
                                       "promql_expr_test": checks}], [RECORDING])


def test_fleet_prediction_drift_from_score_buckets(promtool, tmp_path):
    rng = np.random.default_rng(11)
    reference = rng.dirichlet(np.ones(len(LES)))
    inputs = []
    replicas = _replicas(rng, len(LES), shift=3)
    for instance, cum in replicas.items():
        buckets = np.cumsum(np.nan_to_num(cum), axis=1)  # cumulative over le, as Prometheus histograms
        buckets[np.isnan(cum[:, 0])] = np.nan
        for i, le in enumerate(LES):
            inputs.append(series("ml_prediction_score_bucket", _mask(buckets, i), **MODEL, job="svc",
                                 instance=instance, ml_operation_name="predict_proba", le=le))
            # a decision_function histogram of the same model is left out (its scores are not probabilities)
            inputs.append(series("ml_prediction_score_bucket", _mask(buckets * 5, i), **MODEL, job="svc",
                                 instance=instance, ml_operation_name="decision_function", le=le))
            alive = [None if np.isnan(v) else float(reference[i]) for v in cum[:, 0]]
            inputs.append(series("ml_baseline_bin_fraction", alive, **MODEL, job="svc", instance=instance,
                                 ml_feature_name=SCORE_FEATURE, ml_bin_index=str(i)))
    checks = []
    for window, steps in (("10m", 40), ("1h", 240)):
        counts = _window_counts(replicas, steps)
        value = float(psi(reference, counts))
        assert value > 0
        checks.append(close_to(f'ml:fleet_drift_psi{{ml_feature_name="{SCORE_FEATURE}", window="{window}"}}',
                               value, "20m"))
        for i in (0, 7, len(LES) - 1):
            checks.append(close_to(f'ml:fleet_feature_bin_count{{ml_feature_name="{SCORE_FEATURE}", '
                                   f'ml_bin_index="{i}", window="{window}"}}', float(counts[i]), "20m"))
    # the score feature is not an input feature: no drift share
    checks.append({"expr": "ml:fleet_drift_share", "eval_time": "20m", "exp_samples": []})
    run_promtool(promtool, tmp_path, [{"interval": f"{STEP}s", "input_series": inputs,
                                       "promql_expr_test": checks}], [RECORDING])


# ------------------------------------------------------------------------------------------------------
# alerts: each fires on its incident and not on healthy data
# ------------------------------------------------------------------------------------------------------
M = {"ml_model_name": "churn", "ml_model_version": "7"}


def _alert_test(alert: str, incident: list[dict], healthy: list[dict], pending_at: str | None, firing_at: str,
                labels: dict[str, str], interval: str = "1m") -> list[dict]:
    """Two promtool tests: the incident's series make ``alert`` pending, then firing with ``labels``; the
    healthy series never make it fire."""
    extra = {"alertname": alert, **labels}

    def alerts(state: str) -> str:
        return "ALERTS{" + ", ".join(f'{k}="{v}"' for k, v in sorted({**extra, "alertstate": state}.items())) + "}"

    checks = [{"expr": f'ALERTS{{alertname="{alert}"}}', "eval_time": firing_at,
               "exp_samples": [{"labels": alerts("firing"), "value": 1}]}]
    if pending_at:
        checks.append({"expr": f'ALERTS{{alertname="{alert}"}}', "eval_time": pending_at,
                       "exp_samples": [{"labels": alerts("pending"), "value": 1}]})
    quiet = [{"expr": f'ALERTS{{alertname="{alert}"}}', "eval_time": t, "exp_samples": []}
             for t in ([pending_at] if pending_at else []) + [firing_at]]
    return [{"interval": interval, "input_series": incident, "promql_expr_test": checks},
            {"interval": interval, "input_series": healthy, "promql_expr_test": quiet}]


def _latency(le_counts: dict[str, float]) -> list[dict]:
    return [series("ml_operation_duration_seconds_bucket", [i * n for i in range(40)], **M, job="s", instance="i",
                   ml_operation_name="predict_proba", le=le) for le, n in le_counts.items()]


def _calls(ok: float, errors: float) -> list[dict]:
    out = [series("ml_operation_duration_seconds_count", [i * ok for i in range(40)], **M, job="s", instance="i",
                  ml_operation_name="predict_proba")]
    if errors:
        out.append(series("ml_operation_duration_seconds_count", [i * errors for i in range(40)], **M, job="s",
                          instance="i", ml_operation_name="predict_proba", error_type="ValueError"))
    return out


def _gauge(name: str, values: list[float], **labels: str) -> list[dict]:
    return [series(name, values, **M, job="s", instance="i", **labels)]


def _bins(name: str, fractions: list[float], rows_per_step: float, steps: int = 40, **labels: str) -> list[dict]:
    return [series(name, [i * rows_per_step * f for i in range(steps)], **M, job="s", instance="i",
                   ml_bin_index=str(b), **labels) for b, f in enumerate(fractions)]


def _reference(fractions: list[float], feature: str) -> list[dict]:
    return [series("ml_baseline_bin_fraction", [f] * 40, **M, job="s", instance="i", ml_feature_name=feature,
                   ml_bin_index=str(b)) for b, f in enumerate(fractions)]


def _scores(fractions: list[float], rows_per_step: float) -> list[dict]:
    cumulative = np.cumsum(fractions)
    return [series("ml_prediction_score_bucket", [i * rows_per_step * float(c) for i in range(40)], **M, job="s",
                   instance="i", ml_operation_name="predict_proba", le=le) for le, c in zip(LES, cumulative)]


def _labels_series(shares_by_phase: list[tuple[int, dict[str, float]]]) -> list[dict]:
    """ml_prediction_count_total per label: phases of (steps, {label: predictions per step})."""
    labels = sorted({k for _, shares in shares_by_phase for k in shares})
    out = []
    for label in labels:
        values, total = [], 0.0
        for steps, shares in shares_by_phase:
            for _ in range(steps):
                total += shares.get(label, 0.0)
                values.append(total)
        out.append(series("ml_prediction_count_total", values, **M, job="s", instance="i",
                          ml_prediction_label=label))
    return out


UNIFORM_SCORES = [1 / len(LES)] * len(LES)
COLLAPSED_SCORES = [0.0] * (len(LES) - 1) + [1.0]
ALERT_CASES = {
    "MLModelHighLatency": dict(
        incident=_latency({"0.25": 0, "0.5": 1, "1": 10, "+Inf": 10}),
        healthy=_latency({"0.005": 9, "0.01": 10, "0.5": 10, "1": 10, "+Inf": 10}),
        pending_at="6m", firing_at="18m", labels={**M, "ml_operation_name": "predict_proba", "severity": "warning",
                                                 "team": "ml"}),
    "MLModelHighErrorRate": dict(
        incident=_calls(ok=9, errors=1), healthy=_calls(ok=99, errors=1),
        pending_at="3m", firing_at="12m", labels={**M, "severity": "critical", "team": "ml"}),
    "MLInputRejectRate": dict(
        incident=_calls(ok=9, errors=0) + _gauge("ml_input_errors_total", [i * 1.0 for i in range(40)],
                                                   error_type="invalid_json", http_route="/predict"),
        healthy=_calls(ok=99, errors=0) + _gauge("ml_input_errors_total", [i * 1.0 for i in range(40)],
                                                   error_type="invalid_json", http_route="/predict"),
        pending_at="6m", firing_at="18m", labels={**M, "severity": "warning", "team": "ml"}),
    "MLInputViolationRate": dict(
        incident=_gauge("ml_input_rows_total", [i * 100.0 for i in range(40)], ml_operation_name="predict_proba")
        + _gauge("ml_validation_violations_total", [i * 20.0 for i in range(40)], ml_feature_name="age",
                 ml_validation_check="out_of_range"),
        healthy=_gauge("ml_input_rows_total", [i * 100.0 for i in range(40)], ml_operation_name="predict_proba")
        + _gauge("ml_validation_violations_total", [i * 1.0 for i in range(40)], ml_feature_name="age",
                 ml_validation_check="out_of_range"),
        pending_at="5m", firing_at="18m",
        labels={**M, "ml_validation_check": "out_of_range", "severity": "warning", "team": "ml"}),
    "MLFeatureDrift": dict(
        incident=_gauge("ml_drift_score", [0.25] * 40, ml_feature_name="age", ml_drift_method="psi"),
        healthy=_gauge("ml_drift_score", [0.05] * 40, ml_feature_name="age", ml_drift_method="psi")
        + _gauge("ml_drift_score", [0.3] * 40, ml_feature_name="age", ml_drift_method="ks"),
        pending_at="5m", firing_at="20m",
        labels={**M, "ml_feature_name": "age", "severity": "warning", "team": "ml", "scope": "process"}),
    "MLPredictionDrift": dict(
        incident=_gauge("ml_drift_score", [0.25] * 40, ml_feature_name=SCORE_FEATURE, ml_drift_method="psi"),
        healthy=_gauge("ml_drift_score", [0.05] * 40, ml_feature_name=SCORE_FEATURE, ml_drift_method="psi"),
        pending_at="5m", firing_at="20m", labels={**M, "severity": "warning", "team": "ml", "scope": "process"}),
    "MLFleetFeatureDrift": dict(
        incident=_bins("ml_feature_bin_count_total", [0.7, 0.1, 0.1, 0.1], 10, ml_feature_name="age")
        + _reference([0.25] * 4, "age"),
        healthy=_bins("ml_feature_bin_count_total", [0.25] * 4, 10, ml_feature_name="age")
        + _reference([0.25] * 4, "age"),
        pending_at="12m", firing_at="30m",
        labels={**M, "ml_feature_name": "age", "window": "1h", "severity": "warning", "team": "ml",
                "scope": "fleet"}),
    "MLFleetPredictionDrift": dict(
        incident=_scores([0.5] + [0.5 / (len(LES) - 1)] * (len(LES) - 1), 10) + _reference(UNIFORM_SCORES,
                                                                                          SCORE_FEATURE),
        healthy=_scores(UNIFORM_SCORES, 10) + _reference(UNIFORM_SCORES, SCORE_FEATURE),
        pending_at="12m", firing_at="30m",
        labels={**M, "ml_feature_name": SCORE_FEATURE, "window": "1h", "severity": "warning", "team": "ml",
                "scope": "fleet"}),
    "MLFleetDatasetDrift": dict(
        incident=_bins("ml_feature_bin_count_total", [0.7, 0.1, 0.1, 0.1], 10, ml_feature_name="age")
        + _reference([0.25] * 4, "age")
        + _bins("ml_feature_bin_count_total", [0.25] * 4, 10, ml_feature_name="income")
        + _reference([0.25] * 4, "income"),
        healthy=_bins("ml_feature_bin_count_total", [0.7, 0.1, 0.1, 0.1], 10, ml_feature_name="age")
        + _reference([0.25] * 4, "age")
        + [s for f in ("income", "tenure") for s in _bins("ml_feature_bin_count_total", [0.25] * 4, 10,
                                                            ml_feature_name=f) + _reference([0.25] * 4, f)],
        pending_at="12m", firing_at="30m",
        labels={**M, "window": "1h", "severity": "critical", "team": "ml", "scope": "fleet"}),
    "MLPredictionScoreCollapse": dict(
        incident=_scores(COLLAPSED_SCORES, 10) + _reference(UNIFORM_SCORES, SCORE_FEATURE),
        # a model whose scores sit in one bin in the baseline too (rare positives) is not collapsing
        healthy=_scores(COLLAPSED_SCORES, 10) + _reference(COLLAPSED_SCORES, SCORE_FEATURE),
        pending_at="15m", firing_at="30m",
        labels={**M, "ml_bin_index": str(len(LES) - 1), "severity": "critical", "team": "ml"}),
    "MLPredictionClassCollapse": dict(
        # 20 h of mixed predictions, then one class only
        incident=_labels_series([(1200, {"0": 5, "1": 5}), (60, {"1": 10})]),
        # a model that always predicts 98% "0" is not collapsing
        healthy=_labels_series([(1260, {"0": 98, "1": 2})]),
        pending_at="20h35m", firing_at="20h50m", labels={**M, "severity": "warning", "team": "ml"}),
    "MLPerformanceLow": dict(
        incident=_gauge("ml_performance", [0.62] * 40, ml_performance_metric="accuracy"),
        healthy=_gauge("ml_performance", [0.91] * 40, ml_performance_metric="accuracy")
        + _gauge("ml_performance", [0.3] * 40, ml_performance_metric="log_loss"),
        pending_at="5m", firing_at="20m",
        labels={**M, "ml_performance_metric": "accuracy", "severity": "critical", "team": "ml"}),
    "MLPerformanceDrop": dict(
        incident=_gauge("ml_performance", [0.95] * 70 + [0.85] * 30, ml_performance_metric="roc_auc"),
        healthy=_gauge("ml_performance", [0.95] * 70 + [0.93] * 30, ml_performance_metric="roc_auc"),
        pending_at="75m", firing_at="90m",
        labels={**M, "ml_performance_metric": "roc_auc", "severity": "warning", "team": "ml"}),
}


def test_every_alert_has_a_case():
    names = re.findall(r"^\s+- alert: (\w+)$", ALERTING.read_text(), flags=re.M)
    assert sorted(names) == sorted(ALERT_CASES)


@pytest.mark.parametrize("alert", sorted(ALERT_CASES))
def test_alert_fires_on_incident_and_not_on_healthy_data(promtool, tmp_path, alert):
    tests = _alert_test(alert, **ALERT_CASES[alert])
    run_promtool(promtool, tmp_path, tests, [RECORDING, ALERTING], evaluation_interval="1m")
