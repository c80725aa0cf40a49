"""One replica of a prediction service with several models, for tests/e2e/test_processor_pipeline.py.

Run under ``opentelemetry-instrument`` in a directory holding ``<name>.pkl`` (a fitted classifier) and
``<name>.baseline.json`` (found by otel-ml next to the pickle) for every name in ``REPLICA_MODELS``
(comma-separated). Serves on 127.0.0.1:``PORT``:

* ``POST /predict/<name>`` with ``{"rows": [[...], ...]}`` (``null`` for a missing value): answers
  ``{"proba": [[...], ...]}``, the model's ``predict_proba``, to which otel-ml adds ``prediction_id``
  (one id per row);
* ``GET /health``: ``ok``.

SIGTERM ends it normally, so the OpenTelemetry SDK exports what it still holds (metrics, log records).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys

import numpy as np
from flask import Flask, jsonify, request

MODELS: dict[str, object] = {}
app = Flask(__name__)


@app.post("/predict/<name>")
def predict(name: str):
    rows = np.array(request.get_json()["rows"], dtype=np.float64)  # null -> NaN
    return jsonify(proba=MODELS[name].predict_proba(rows).tolist())


@app.get("/health")
def health():
    return "ok"


def main() -> None:
    for name in os.environ["REPLICA_MODELS"].split(","):
        with open(f"{name}.pkl", "rb") as f:
            MODELS[name] = pickle.load(f)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)


if __name__ == "__main__":
    main()
