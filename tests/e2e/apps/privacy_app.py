"""Privacy app: puts sentinel raw values into the inputs of scikit-learn models, under the launcher.

Sentinels (``tests/e2e/test_privacy.py`` imports them):

* ``NUMBER``: a numeric feature value, in a single-row call and in one row of a batch;
* ``CATEGORY``: an unseen string category of a pandas column going through a ColumnTransformer pipeline;
* ``EMAIL``: an e-mail-like string in another categorical column.

``PRIVACY_SCENARIO`` picks what the app does:

* ``inputs`` (default): healthy single-row and batch calls of a leaf model and of a pandas pipeline with the
  sentinels in their inputs, plus one failing call (a missing column) whose error message holds no sentinel;
* ``errors``: calls that scikit-learn rejects with an error message quoting the offending input value (an
  unknown category, a string in a numeric column).

Every call of a scenario runs under one parent span, so the whole run is one trace; the gateway's tail
sampling keeps it because it has an error span, and the test sees every model span the app made. The
outcome tracker is attached (what the Flask integration does) so prediction records
(``OTEL_ML_PREDICTION_RECORDS_RATE``) are emitted as log records. The JSON summary is printed on the line
starting with ``SUMMARY_PREFIX``.
"""

from __future__ import annotations

import json
import os

NUMBER = 987654.321
CATEGORY = "zqxSentinelSegment42"
EMAIL = "jane.sentinel.qx@example.org"
SUMMARY_PREFIX = "PRIVACY-APP "  # the summary line (console exporters may print spans after it)


def _data():
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    n = 400
    train = pd.DataFrame({
        "income": rng.normal(50_000, 10_000, n),
        "age": rng.integers(18, 80, n).astype(float),
        "debt_ratio": rng.uniform(0, 1, n),
        "segment": rng.choice(["retail", "sme", "corporate"], n),
        "contact": rng.choice(["branch", "phone", "web"], n),
    })
    y = (train["income"] / 50_000 + train["debt_ratio"] + rng.normal(0, 0.3, n) > 1.5).astype(int)
    return train, y


def _pipeline(handle_unknown: str):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return Pipeline([
        ("columns", ColumnTransformer([
            ("num", StandardScaler(), ["income", "age", "debt_ratio"]),
            ("cat", OneHotEncoder(handle_unknown=handle_unknown), ["segment", "contact"]),
        ])),
        ("clf", LogisticRegression(max_iter=1000)),
    ])


def inputs_scenario() -> dict:
    from sklearn.linear_model import LogisticRegression

    train, y = _data()
    numeric = ["income", "age", "debt_ratio"]
    calls = 0

    leaf = LogisticRegression(max_iter=1000).fit(train[numeric], y)
    one = train[numeric].iloc[[0]].copy()
    one["income"] = NUMBER
    leaf.predict_proba(one)
    leaf.predict(one)
    batch = train[numeric].iloc[:25].copy()
    batch.iloc[3, 0] = NUMBER
    leaf.predict_proba(batch)
    leaf.predict(batch)
    calls += 4

    pipe = _pipeline("ignore").fit(train, y)
    row = train.iloc[[1]].copy()
    row["income"], row["segment"], row["contact"] = NUMBER, CATEGORY, EMAIL
    pipe.predict_proba(row)
    rows = train.iloc[:30].copy()
    rows.iloc[5, rows.columns.get_loc("segment")] = CATEGORY
    rows.iloc[6, rows.columns.get_loc("contact")] = EMAIL
    rows.iloc[7, rows.columns.get_loc("income")] = NUMBER
    pipe.predict_proba(rows)
    pipe.predict(rows)
    calls += 3

    try:  # rejected: "columns are missing: {'age'}" (no sentinel in the message)
        pipe.predict(row.drop(columns=["age"]))
    except ValueError:
        calls += 1
    predicted_rows = len(one) * 2 + len(batch) * 2 + len(row) + len(rows) * 2  # one record per row at rate 1.0
    return {"model_calls": calls, "failed_calls": 1, "predicted_rows": predicted_rows}


def errors_scenario() -> dict:
    train, y = _data()
    strict = _pipeline("error").fit(train, y)
    failed = 0
    row = train.iloc[[2]].copy()
    row["segment"] = CATEGORY  # OneHotEncoder: "Found unknown categories ['...'] in column 0 during transform"
    try:
        strict.predict_proba(row)
    except ValueError:
        failed += 1
    row = train.iloc[[3]].copy().astype({"income": object})
    row["income"] = EMAIL  # StandardScaler: "could not convert string to float: '...'"
    try:
        strict.predict(row)
    except ValueError:
        failed += 1
    return {"model_calls": failed, "failed_calls": failed, "predicted_rows": 0}


def main() -> None:
    from opentelemetry import trace

    import otel_ml.outcomes

    otel_ml.outcomes.tracker()  # prediction records, as the Flask integration attaches them
    scenario = os.environ.get("PRIVACY_SCENARIO", "inputs")
    run = {"inputs": inputs_scenario, "errors": errors_scenario}[scenario]
    with trace.get_tracer("privacy_app").start_as_current_span(f"privacy {scenario}") as root:
        summary = run()
        summary["trace_id"] = f"{root.get_span_context().trace_id:032x}"
    summary["scenario"] = scenario
    print(SUMMARY_PREFIX + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
