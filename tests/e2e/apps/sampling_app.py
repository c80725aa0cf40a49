"""Sampling app: many healthy, a few low-confidence and some failing single-row predictions, each its own trace.

Run under ``opentelemetry-instrument`` with no parent span, so every ``predict_proba`` call of the leaf model
(a LogisticRegression trained on noisy, overlapping classes) is a root span: one call, one trace.

* ``SAMPLING_HEALTHY`` (default 200) rows whose top-class probability is at least 0.8;
* ``SAMPLING_LOW`` (default 5) rows whose top-class probability is below 0.6 (near the class boundary);
* ``SAMPLING_ERRORS`` (default 20) calls with three features instead of two (ValueError, caught).

Rows are picked from a fresh sample by the model's own formula (``coef_``, ``intercept_``), so picking makes
no model call and no span. The calls run in a shuffled order; the JSON summary is printed on the line
starting with ``SUMMARY_PREFIX``, with the confidences the instrumented calls returned.
"""

from __future__ import annotations

import json
import os

SUMMARY_PREFIX = "SAMPLING-APP "


def main() -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    n_healthy = int(os.environ.get("SAMPLING_HEALTHY", "200"))
    n_low = int(os.environ.get("SAMPLING_LOW", "5"))
    n_errors = int(os.environ.get("SAMPLING_ERRORS", "20"))
    rng = np.random.default_rng(11)

    # noisy data: two overlapping clouds
    y = rng.integers(0, 2, 2000)
    X = rng.normal(0.0, 1.5, (2000, 2)) + np.where(y[:, None] == 1, 1.5, -1.5)
    model = LogisticRegression().fit(X, y)

    pool = rng.normal(0.0, 3.0, (20000, 2))
    p1 = 1.0 / (1.0 + np.exp(-(pool @ model.coef_[0] + model.intercept_[0])))
    confidence = np.maximum(p1, 1.0 - p1)
    healthy = pool[confidence >= 0.8][:n_healthy]
    low = pool[confidence < 0.58][:n_low]
    assert len(healthy) == n_healthy and len(low) == n_low

    calls = [("healthy", row) for row in healthy] + [("low", row) for row in low] + [("error", None)] * n_errors
    order = rng.permutation(len(calls))
    returned = {"healthy": [], "low": []}
    errors = 0
    for i in order:
        kind, row = calls[i]
        if kind == "error":
            try:
                model.predict_proba(np.zeros((1, 3)))
            except ValueError:
                errors += 1
            continue
        proba = model.predict_proba(row.reshape(1, -1))
        returned[kind].append(float(proba.max()))

    print(SUMMARY_PREFIX + json.dumps({
        "healthy": len(returned["healthy"]), "low_confidence": len(returned["low"]), "errors": errors,
        "healthy_min_confidence": min(returned["healthy"]), "low_confidences": returned["low"],
    }), flush=True)


if __name__ == "__main__":
    main()
