"""An unchanged app under ``opentelemetry-instrument`` sends ML spans and metrics to the real collector."""

from __future__ import annotations

import textwrap

import pytest

from otel_ml import semconv

from .conftest import (
    instrumented_env,
    jaeger_traces,
    prom_value,
    run_instrumented,
    span_tags,
    unique_service,
    wait_for,
)

pytestmark = pytest.mark.e2e

APP = textwrap.dedent('''
    """A plain script: no OpenTelemetry or otel-ml import anywhere."""
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y),
                "credit_check.joblib")
    model = joblib.load("credit_check.joblib")
    for i in range(200):
        model.predict_proba(X.iloc[i:i + 1])
    model.predict(X.iloc[:50])
    try:
        model.predict(X.iloc[:3, :5])
    except ValueError:
        print("bad input rejected")
''')


@pytest.fixture(scope="module")
def launched(stack, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("launcher")
    script = workdir / "app.py"
    script.write_text(APP)
    service = unique_service("launcher")
    result = run_instrumented(script, instrumented_env(service, OTEL_ML_MODEL_VERSION="2024.11"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bad input rejected" in result.stdout
    return service


def _model_spans(service: str) -> list[dict]:
    spans = [s for t in jaeger_traces(service) for s in t["spans"]]
    return [s for s in spans if span_tags(s).get(semconv.MODEL_NAME) == "credit_check"]


def test_error_trace_arrives_with_ml_attributes(launched):
    def error_span():
        return [s for s in _model_spans(launched) if span_tags(s).get(semconv.ERROR_TYPE) == "ValueError"]

    (span,) = wait_for(error_span, what="the failed predict span in Jaeger")
    tags = span_tags(span)
    assert span["operationName"] == "predict credit_check"
    assert tags[semconv.MODEL_VERSION] == "2024.11"
    assert len(tags[semconv.MODEL_ID]) == 12
    assert tags[semconv.INPUT_ROWS] == 3 and tags[semconv.INPUT_FEATURES] == 5
    assert tags["otel.status_code"] == "ERROR"


def test_sampled_prediction_spans_carry_prediction_and_feature_summaries(launched):
    spans = wait_for(lambda: [s for s in _model_spans(launched) if semconv.PREDICTION_ID in span_tags(s)],
                     what="healthy predict spans kept by tail sampling")
    single = [span_tags(s) for s in spans if span_tags(s).get(semconv.INPUT_ROWS) == 1]
    assert single, "no single-row span was kept"
    tags = single[0]
    assert tags[semconv.OPERATION_NAME] == "predict_proba"
    assert tags[semconv.MODEL_TYPE] == semconv.MODEL_TYPE_BINARY
    assert 0.0 <= tags[semconv.PREDICTION_SCORE] <= 1.0
    assert tags[semconv.PREDICTION_LABEL] in ("0", "1")
    # the pipeline's steps are child spans in the same trace
    children = [s for t in jaeger_traces(launched) for s in t["spans"]
                if s["operationName"] in ("transform StandardScaler", "predict_proba LogisticRegression")]
    assert children


def test_metrics_arrive_in_prometheus_with_the_counts_the_app_caused(launched):
    selector = f'job="{launched}", ml_model_name="credit_check", ml_model_version="2024.11"'
    rows = wait_for(lambda: prom_value(f'sum(ml_input_rows_total{{{selector}, ml_operation_name="predict_proba"}})'),
                    what="ml_input_rows_total in Prometheus")
    assert rows == 200
    assert prom_value(f'sum(ml_input_rows_total{{{selector}, ml_operation_name="predict"}})') == 50
    calls = prom_value(f'sum(ml_operation_duration_seconds_count{{{selector}, ml_operation_name="predict_proba"}})')
    assert calls == 200
    errors = prom_value(f'sum(ml_operation_duration_seconds_count{{{selector}, error_type="ValueError"}})')
    assert errors == 1
    scored = prom_value(f'sum(ml_prediction_score_count{{{selector}}})')
    assert scored == 200
    predicted = prom_value(f'sum(ml_prediction_count_total{{{selector}}})')
    assert predicted == 250
