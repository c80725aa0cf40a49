"""The credit-risk service: a plain Flask app serving the pickled pipeline, with no OpenTelemetry code.

    python train.py                                       # once: credit_risk.pkl (+ baseline, holdout)
    opentelemetry-instrument python app.py                # http://127.0.0.1:8080
    opentelemetry-instrument gunicorn -w 3 -b 127.0.0.1:8080 app:app

POST /predict   one applicant (a JSON object with the 20 attributes of train.FEATURES) or a batch (a JSON
                list, or {"applicants": [...]}, at most MAX_BATCH); answers the probability of default and
                the decision. Rejects with 400 (body not JSON, missing or mistyped attribute) or 413 (too
                many applicants); under otel-ml these count as ml.input.errors, and every successful answer
                carries its prediction id (X-Prediction-Id header and "prediction_id" field).
POST /feedback  outcomes: {"prediction_id": "...", "actual": 0 or 1} or a list (otel-ml's ready endpoint).
GET  /health

Environment: PORT (8080), HOST (127.0.0.1), MODEL_PATH (credit_risk.pkl next to this file),
DECISION_THRESHOLD (0.5).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from pathlib import Path

import pandas as pd
from flask import Flask, jsonify, request
from train import CATEGORICAL, FEATURES, NUMERIC  # the columns the model was trained on (train.py, beside this file)

from otel_ml.instrumentation.flask import register_feedback

HERE = Path(__file__).resolve().parent
MODEL_PATH = Path(os.environ.get("MODEL_PATH", HERE / "credit_risk.pkl"))
THRESHOLD = float(os.environ.get("DECISION_THRESHOLD", "0.5"))
MAX_BATCH = 100


with open(MODEL_PATH, "rb") as fh:
    model = pickle.load(fh)  # under otel-ml: ml.model.name=credit_risk, ml.model.id=<file hash>

app = Flask(__name__)
register_feedback(app)  # POST /feedback -> otel_ml.record_outcome for each outcome


class InvalidRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def applicants_from(body: object) -> list[dict]:
    if isinstance(body, dict) and "applicants" in body:
        body = body["applicants"]
    rows = body if isinstance(body, list) else [body]
    if not rows:
        raise InvalidRequestError(400, "no applicant")
    if len(rows) > MAX_BATCH:
        raise InvalidRequestError(413, f"at most {MAX_BATCH} applicants per request, got {len(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidRequestError(400, f"applicant {i}: expected a JSON object")
        missing = [f for f in FEATURES if f not in row or row[f] is None]
        if missing:
            raise InvalidRequestError(400, f"applicant {i}: missing {', '.join(missing[:3])}")
        for f in NUMERIC:
            if isinstance(row[f], bool) or not isinstance(row[f], (int, float)):
                raise InvalidRequestError(400, f"applicant {i}: {f} must be a number, got {row[f]!r}")
        for f in CATEGORICAL:
            if not isinstance(row[f], str):
                raise InvalidRequestError(400, f"applicant {i}: {f} must be a string, got {row[f]!r}")
    return rows


@app.post("/predict")
def predict():
    body = request.get_json(silent=True)
    if body is None:
        return jsonify(error="the body must be JSON"), 400
    try:
        rows = applicants_from(body)
    except InvalidRequestError as exc:
        return jsonify(error=str(exc)), exc.status
    X = pd.DataFrame([[row[f] for f in FEATURES] for row in rows], columns=FEATURES)
    X[NUMERIC] = X[NUMERIC].astype("float64")
    probability = model.predict_proba(X)[:, 1]
    results = [{"default_probability": round(float(p), 6), "decision": "decline" if p >= THRESHOLD else "approve"}
               for p in probability]
    if isinstance(body, dict) and "applicants" not in body:
        return jsonify(results[0])
    return jsonify(results=results)


@app.get("/health")
def health():
    return jsonify(status="ok")


if __name__ == "__main__":
    # `kill` / `docker stop` send SIGTERM, which by default ends Python without running atexit; exiting
    # normally instead lets the OpenTelemetry SDK and otel-ml export what they still hold
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8080")), threaded=True)
