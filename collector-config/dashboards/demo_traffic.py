"""Demo traffic for the otel-ml dashboards and alerts: a Flask predict service on scikit-learn's
breast-cancer data, with a baseline, healthy requests, rejected requests, model errors, missing values,
outcomes and, last, a drifted segment.

    python demo_traffic.py prepare DIR                               # train, pickle, baseline (plain Python)
    opentelemetry-instrument python demo_traffic.py serve DIR        # the traffic (instrumented)

``prepare`` writes ``DIR/breast_cancer.pkl`` (SimpleImputer + StandardScaler + LogisticRegression) and
``DIR/breast_cancer.baseline.json`` next to it (found automatically when the model is unpickled).
``serve`` loads the model with pickle and sends requests through a Flask app's test client, so the
HTTP server spans, the model spans and every ML metric are real; no port is opened. Phases, spread over
``--seconds`` (default 20):

1. healthy requests of 1-8 rows (held-out rows, unchanged), each followed by its outcome
   (``otel_ml.record_outcome`` with the true label);
2. rejected requests: invalid JSON (``invalid_json``), wrong number of features (``wrong_feature_count``),
   too many rows (HTTP 413);
3. model errors: direct calls with the wrong number of columns (``ValueError`` on the model span);
4. rows with missing values (imputed by the pipeline, counted in ``ml_input_missing_total``);
5. a drifted segment: the first ``--drift-features`` features scaled by ``--drift-factor``, with outcomes,
   so the drift gauges, fleet PSI, validation violations and performance all move.

Set ``OTEL_ML_DRIFT_WINDOW_ROWS`` (e.g. 200) so drift windows close within the demo. Prints one JSON line
with what it sent.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

MODEL_FILE = "breast_cancer.pkl"


def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return bunch.data, bunch.target, [str(n) for n in bunch.feature_names]


def split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out row indices (70 / 30)."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(n * 0.7)
    return order[:cut], order[cut:]


def prepare(workdir: Path) -> Path:
    """Train the pipeline on the training rows, pickle it and save its baseline next to it."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from otel_ml.baseline import Baseline

    X, y, names = data()
    train, _ = split(len(X))
    model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(X[train], y[train])
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / MODEL_FILE
    with open(path, "wb") as f:
        pickle.dump(model, f)
    Baseline().fit(X[train], y[train], scores=model.predict_proba(X[train]), feature_names=names).save(
        path.with_suffix(".baseline.json"))
    return path


def make_app(model, n_features: int):
    import flask

    from otel_ml.instrumentation.flask import set_input_error_type

    app = flask.Flask("demo")

    @app.post("/predict")
    def predict():
        body = flask.request.get_json()  # invalid JSON: Flask answers 400 (counted as invalid_json)
        rows = np.asarray(body["rows"], dtype=np.float64)
        if rows.shape[0] > 100:
            return {"error": "too many rows"}, 413
        if rows.ndim != 2 or rows.shape[1] != n_features:
            set_input_error_type("wrong_feature_count")
            return {"error": f"expected {n_features} features"}, 422
        proba = model.predict_proba(rows)[:, 1]
        return {"score": proba.tolist(), "label": (proba > 0.5).astype(int).tolist()}

    return app


def serve(workdir: Path, seconds: float, drift_features: int, drift_factor: float, seed: int) -> dict:
    import otel_ml
    from otel_ml.records import ids_of_header

    with open(workdir / MODEL_FILE, "rb") as f:  # loaded from a file: name and baseline come from its path
        model = pickle.load(f)
    X, y, names = data()
    _, held_out = split(len(X))
    rng = np.random.default_rng(seed)
    app = make_app(model, X.shape[1])
    client = app.test_client()
    sent = {"requests": 0, "rows": 0, "rejected": 0, "model_errors": 0, "missing_values": 0,
            "drifted_rows": 0, "outcomes": 0, "joined": 0}

    def request(idx: np.ndarray, rows: np.ndarray) -> None:
        response = client.post("/predict", json={"rows": np.where(np.isnan(rows), None, rows).tolist()})
        assert response.status_code == 200, response.get_data(as_text=True)
        sent["requests"] += 1
        sent["rows"] += len(rows)
        ids = ids_of_header(response.headers["X-Prediction-Id"])
        for pid, i in zip(ids, idx):
            sent["joined"] += bool(otel_ml.record_outcome(pid, actual=int(y[i])))
            sent["outcomes"] += 1

    plan = ["good"] * 120 + ["reject"] * 12 + ["model_error"] * 6 + ["missing"] * 20 + ["drift"] * 100
    pause = seconds / len(plan)
    for kind in plan:
        idx = rng.choice(held_out, size=int(rng.integers(1, 9)))
        rows = X[idx].copy()
        if kind == "good":
            request(idx, rows)
        elif kind == "missing":
            rows[:, rng.integers(0, X.shape[1], size=2)] = np.nan
            sent["missing_values"] += int(np.isnan(rows).sum())
            request(idx, rows)
        elif kind == "drift":
            rows[:, :drift_features] *= drift_factor
            sent["drifted_rows"] += len(rows)
            request(idx, rows)
        elif kind == "reject":
            variant = sent["rejected"] % 3
            if variant == 0:
                response = client.post("/predict", data="{not json", content_type="application/json")
            elif variant == 1:
                response = client.post("/predict", json={"rows": rows[:, :5].tolist()})
            else:
                response = client.post("/predict", json={"rows": X[:101].tolist()})
            assert 400 <= response.status_code < 500, response.status_code
            sent["rejected"] += 1
        else:
            try:
                model.predict_proba(rows[:, :10])
            except ValueError:
                sent["model_errors"] += 1
        time.sleep(pause)
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["prepare", "serve"])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the traffic (serve)")
    parser.add_argument("--drift-features", type=int, default=10, help="features scaled in the drifted segment")
    parser.add_argument("--drift-factor", type=float, default=1.6, help="scale of the drifted features")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(json.dumps({"model": str(prepare(args.workdir))}))
    else:
        print(json.dumps(serve(args.workdir, args.seconds, args.drift_features, args.drift_factor, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
