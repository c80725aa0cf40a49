"""The real emitters against the processor: three ``opentelemetry-instrument`` replicas of a pickled pipeline
(its baseline next to it) export OTLP straight to a processor; a fourth process records the outcomes, so
none of them meets its prediction in process and every one is joined by the processor.

Checks the contract of docs/processor.md with the code that produces it (otel_ml.metrics, otel_ml.records,
otel_ml.outcomes): fleet drift equals ``otel_ml.drift.psi`` on the union of the replicas' rows with the
baseline's bins, and performance equals scikit-learn on the union's (prediction, truth) pairs.
"""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from otel_ml.drift import psi
from otel_ml.processor.otlp import SCORE_FEATURE

MODEL = "fleet_drift"
BATCH = 25

REPLICA = textwrap.dedent('''
    import pickle, sys
    import numpy as np
    with open("fleet_drift.pkl", "rb") as f:  # otel-ml finds fleet_drift.baseline.json next to it
        model = pickle.load(f)
    X = np.load(sys.argv[1])
    for start in range(0, len(X), int(sys.argv[2])):
        model.predict_proba(X[start:start + int(sys.argv[2])])
    print("scored", len(X))
''')

FEEDBACK = textwrap.dedent('''
    import json, sys
    import otel_ml
    for pid, actual in json.load(open(sys.argv[1])):
        otel_ml.record_outcome(pid, actual, model="fleet_drift")
    print("recorded")
''')


def _launcher() -> list[str]:
    candidate = Path(sys.executable).with_name("opentelemetry-instrument")
    return [str(candidate)] if candidate.exists() else ["opentelemetry-instrument"]


def _env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTEL_ML_"))}
    env.update(OTEL_SERVICE_NAME="fleet-api", OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="otlp",
               OTEL_LOGS_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{endpoint}",
               OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_METRIC_EXPORT_INTERVAL="1000", OTEL_BLRP_SCHEDULE_DELAY="200",
               OTEL_ML_MODEL_NAME=MODEL, OTEL_ML_MODEL_VERSION="v1", OTEL_ML_PREDICTION_RECORDS_RATE="1",
               PYTHONUNBUFFERED="1")
    return env


def _run(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*_launcher(), sys.executable, *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_instrumented_replicas_to_processor(make_processor, tmp_path):
    from sklearn.datasets import load_breast_cancer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from otel_ml.baseline import Baseline
    from otel_ml.frame import as_table

    data = load_breast_cancer()
    X, y, names = data.data, data.target, [str(n) for n in data.feature_names]
    model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=5000)).fit(X, y)
    with open(tmp_path / "fleet_drift.pkl", "wb") as f:
        pickle.dump(model, f)
    baseline = Baseline().fit(X, scores=model.predict_proba(X), feature_names=names)
    baseline.save(tmp_path / "fleet_drift.baseline.json")
    (tmp_path / "replica.py").write_text(REPLICA)
    (tmp_path / "feedback.py").write_text(FEEDBACK)

    rng = np.random.default_rng(3)
    std = X.std(axis=0)
    picks = [rng.choice(len(X), n) for n in (300, 250, 350)]
    inputs = [X[picks[0]], X[picks[1]].copy(), X[picks[2]].copy()]
    inputs[1][:, :5] *= 1.4
    inputs[2][:, 10:15] += 0.8 * std[10:15]
    truths = [y[p] for p in picks]

    processor, _ = make_processor(serve=True, drift_windows=(3600.0,), drift_slot=300.0)
    env = _env(processor.addresses["grpc"])
    procs = []
    for i, rows in enumerate(inputs):
        np.save(tmp_path / f"replica{i}.npy", rows)
        procs.append(_run(["replica.py", f"replica{i}.npy", str(BATCH)], env, tmp_path))
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0 and "scored" in out, err[-3000:]

    union = np.vstack(inputs)
    n = len(union)
    deadline = time.monotonic() + 30
    while processor.store.rows_predictions < n and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processor.store.rows_predictions == n  # one prediction record per row, from all three replicas

    # the truth of each prediction record, found by its score (the replicas' scores, batch by batch)
    scores = np.concatenate([np.concatenate([model.predict_proba(x[s:s + BATCH])[:, 1]
                                             for s in range(0, len(x), BATCH)]) for x in inputs])
    truth_by_score = dict(zip(scores.tolist(), np.concatenate(truths).tolist()))
    with sqlite3.connect(processor.config.store_path) as conn:
        stored = conn.execute("SELECT id, score FROM predictions").fetchall()
    outcomes = [(pid, int(truth_by_score[score])) for pid, score in stored]
    (tmp_path / "outcomes.json").write_text(json.dumps(outcomes))
    feedback = _run(["feedback.py", "outcomes.json"], {**env, "OTEL_ML_PREDICTION_RECORDS_RATE": "0"}, tmp_path)
    out, err = feedback.communicate(timeout=180)
    assert feedback.returncode == 0 and "recorded" in out, err[-3000:]

    deadline = time.monotonic() + 30
    while processor.counters.get("ml.processor.joined", 0) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processor.counters.get("ml.processor.joined", 0) == n
    snap = processor.compute()

    # performance: scikit-learn on the union's pairs
    y_true = np.concatenate(truths)
    y_pred = (scores > 0.5).astype(int)  # what predict would say: the larger of the two probabilities
    perf = {k[2]: v for k, v in snap.performance.items() if k[0] == MODEL and k[3] == 86400.0}
    assert perf["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), rel=1e-12)
    assert perf["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, scores), rel=1e-12)
    assert perf["log_loss"] == pytest.approx(skm.log_loss(y_true, y_proba=scores), rel=1e-9)
    assert perf["brier"] == pytest.approx(skm.brier_score_loss(y_true, y_proba=scores), rel=1e-9)

    # drift: the union's counts on the baseline's bins; the replicas' last exports have arrived by now
    counts = baseline.bin_counts(as_table(union, names))
    expected = {name: float(v) for name, v in zip(names, psi(baseline.reference_fractions, counts))}
    expected[SCORE_FEATURE] = float(psi(baseline.score_fractions, baseline.score_bin_counts(scores)))
    got = {k[2]: v for k, v in snap.drift.scores.items() if k[0] == MODEL and k[3] == "psi"}
    assert set(got) == set(expected)
    worst = max(expected, key=lambda f: abs(got[f] - expected[f]))
    assert got[worst] == pytest.approx(expected[worst], rel=1e-9, abs=1e-12), worst
    share = snap.drift.shares[(MODEL, "v1", "psi", 3600.0)]
    assert share == pytest.approx(np.mean([expected[f] >= 0.1 for f in names]))
