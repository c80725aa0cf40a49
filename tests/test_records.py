"""Prediction and outcome log records: sampling, redaction, trace links, and the shape docs/outcomes.md promises."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import otel_ml
from otel_ml import outcomes, semconv, set_model_identity
from otel_ml.records import MAX_RECORDS_PER_CALL, masked_row, parse_prediction_id

DOC = Path(__file__).resolve().parents[1] / "docs" / "outcomes.md"


def documented(section: str) -> dict[str, str]:
    """attribute -> presence, from the table under ``### {section}`` in docs/outcomes.md."""
    text = DOC.read_text().split(f"### {section}\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([a-z._]+)` \| [^|]+ \| ([^|]+) \|", text, flags=re.M)
    return {name: presence.strip() for name, presence in rows}


@pytest.fixture(scope="module")
def model(breast_cancer):
    X, y = breast_cancer
    fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    set_model_identity(fitted, name="records", version="3", model_id="feedface0123")
    return fitted, X


@pytest.fixture
def recorded(make):
    """``recorded(**config overrides)`` -> (instrumented, log exporter) with the outcome tracker attached."""

    def factory(**overrides):
        inst = make(**overrides)
        logs = InMemoryLogRecordExporter()
        provider = LoggerProvider()
        provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
        outcomes.tracker(inst.telemetry, logger_provider=provider)
        logs.flush_telemetry = inst.telemetry.flush  # prediction records are emitted off the request path
        return inst, logs

    return factory


def records(logs, kind: str) -> list:
    getattr(logs, "flush_telemetry", lambda: None)()
    return [r.log_record for r in logs.get_finished_logs() if r.log_record.attributes[semconv.RECORD_KIND] == kind]


def test_prediction_records_have_the_documented_shape_and_trace_link(recorded, model):
    fitted, X = model
    inst, logs = recorded(prediction_records_rate=1.0)
    proba = fitted.predict_proba(X.iloc[:3])
    (span,) = inst.roots()
    got = records(logs, "prediction")
    assert [r.attributes[semconv.PREDICTION_ID] for r in got] == [
        span.attributes[semconv.PREDICTION_ID][:-1] + str(i) for i in range(3)]
    doc = documented("Prediction record")
    for i, record in enumerate(got):
        a = dict(record.attributes)
        assert set(a) <= set(doc), set(a) - set(doc)
        assert {k for k, presence in doc.items() if presence == "always"} <= set(a)
        assert record.event_name == semconv.EVENT_PREDICTION_RECORD
        assert record.severity_text == "INFO" and record.body is None
        assert (record.trace_id, record.span_id) == (span.context.trace_id, span.context.span_id)
        assert a[semconv.MODEL_NAME] == "records" and a[semconv.MODEL_ID] == "feedface0123"
        assert a[semconv.OPERATION_NAME] == "predict_proba"
        assert list(a[semconv.PREDICTION_SCORES]) == pytest.approx(proba[i])
        assert list(a[semconv.PREDICTION_CLASS_NAMES]) == ["0", "1"]
        assert a[semconv.PREDICTION_SCORE] == pytest.approx(proba[i, 1])
        assert a[semconv.PREDICTION_LABEL] == str(proba[i].argmax())
        assert semconv.INPUT_RAW not in a  # inputs are redacted by default


def test_no_records_by_default(recorded, model):
    fitted, X = model
    inst, logs = recorded()
    fitted.predict_proba(X.iloc[:50])
    assert records(logs, "prediction") == []


def test_prediction_records_are_emitted_off_the_caller_thread(make, model):
    # the caller only queues its calls; otel-ml's aggregator thread emits the records after its next drain
    fitted, X = model
    inst = make(prediction_records_rate=1.0)
    threads: list[str] = []

    class Capture(SimpleLogRecordProcessor):
        def on_emit(self, log_data):
            threads.append(threading.current_thread().name)
            super().on_emit(log_data)

    logs = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(Capture(logs))
    outcomes.tracker(inst.telemetry, logger_provider=provider)
    fitted.predict_proba(X.iloc[:3])
    inst.telemetry.aggregator._wake.set()  # as 256 calls or OTEL_BSP_SCHEDULE_DELAY would
    deadline = time.monotonic() + 10
    while len(threads) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threads == ["otel-ml-aggregator"] * 3


def test_sampling_rate(recorded, model):
    fitted, X = model
    inst, logs = recorded(prediction_records_rate=0.25)
    fitted.predict_proba(X.iloc[:400])
    n = len(records(logs, "prediction"))
    assert 60 <= n <= 140  # Binomial(400, 0.25): mean 100, sd 8.7
    ids = [r.attributes[semconv.PREDICTION_ID] for r in records(logs, "prediction")]
    assert len(set(ids)) == n


def test_records_per_call_are_capped(recorded, model):
    fitted, X = model
    inst, logs = recorded(prediction_records_rate=1.0)
    fitted.predict_proba(X.sample(n=2400, replace=True, random_state=0))
    assert len(records(logs, "prediction")) == MAX_RECORDS_PER_CALL


def test_single_rows_are_sampled_independently(recorded, model):
    fitted, X = model
    inst, logs = recorded(prediction_records_rate=0.5)
    for i in range(200):
        fitted.predict_proba(X.iloc[i:i + 1])
    assert 60 <= len(records(logs, "prediction")) <= 140


def test_raw_inputs_only_with_capture_raw_and_masked(recorded, model):
    fitted, X = model
    inst, logs = recorded(prediction_records_rate=1.0, capture_raw=True, mask_features=("mean radius",))
    fitted.predict_proba(X.iloc[5:7])
    raw = [json.loads(r.attributes[semconv.INPUT_RAW]) for r in records(logs, "prediction")]
    assert raw[0]["mean radius"] == "<masked>"
    assert raw[1]["mean texture"] == pytest.approx(float(X.iloc[6]["mean texture"]))
    assert list(raw[0]) == list(X.columns)


def test_regression_records_carry_the_value(recorded):
    X = np.arange(20, dtype=float).reshape(10, 2)
    model = LinearRegression().fit(X, X.sum(axis=1))
    inst, logs = recorded(prediction_records_rate=1.0)
    model.predict(X[:1])
    (record,) = records(logs, "prediction")
    assert record.attributes[semconv.PREDICTION_SCORE] == pytest.approx(1.0)
    assert semconv.PREDICTION_LABEL not in record.attributes


def test_outcome_records_joined_and_not(recorded, model):
    fitted, X = model
    inst, logs = recorded()
    proba = fitted.predict_proba(X.iloc[:2])
    (span,) = inst.roots()
    prefix = span.attributes[semconv.PREDICTION_ID].rsplit("-", 1)[0]
    assert otel_ml.record_outcome(f"{prefix}-1", 1, timestamp_ns=span.end_time + 5_000_000_000)
    stranger = f"{'ab' * 16}-{'cd' * 8}-0"
    assert not otel_ml.record_outcome(stranger, "1")
    joined, unjoined = records(logs, "outcome")
    doc = documented("Outcome record")
    always = {k for k, presence in doc.items() if presence == "always"}
    for record in (joined, unjoined):
        assert set(record.attributes) <= set(doc) and always <= set(record.attributes)
        assert record.event_name == semconv.EVENT_OUTCOME_RECORD
    a = joined.attributes
    assert a[semconv.PREDICTION_ID] == f"{prefix}-1" and a[semconv.OUTCOME_ACTUAL] == 1
    assert a[semconv.MODEL_NAME] == "records" and a[semconv.MODEL_VERSION] == "3"
    assert a[semconv.PREDICTION_SCORE] == pytest.approx(proba[1, 1])
    assert 4.9 < a[semconv.OUTCOME_DELAY] < 6.0
    assert (joined.trace_id, joined.span_id) == (span.context.trace_id, span.context.span_id)
    assert joined.timestamp == span.end_time + 5_000_000_000
    b = unjoined.attributes
    assert b[semconv.OUTCOME_ACTUAL] == "1" and b[semconv.MODEL_NAME] == "records"  # the only model here
    assert semconv.PREDICTION_LABEL not in b and semconv.OUTCOME_DELAY not in b
    assert unjoined.trace_id == int("ab" * 16, 16) and unjoined.span_id == int("cd" * 8, 16)


def test_outcome_records_name_the_model_given_even_when_it_never_predicted_here(recorded, model):
    # a labelling job: the processor's load balancer routes outcome records by ml.model.name
    fitted, X = model
    inst, logs = recorded()
    fitted.predict_proba(X.iloc[:1])  # another model ("records") predicts in this process
    stranger = f"{'ab' * 16}-{'cd' * 8}-0"
    assert not otel_ml.record_outcome(stranger, 1, model="churn")
    provider_logs = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(provider_logs))
    standalone = outcomes.OutcomeTracker(None, provider)  # no instrumented model at all
    assert not standalone.record(stranger, 0, model="churn")
    for record in (*records(logs, "outcome"), *records(provider_logs, "outcome")):
        a = record.attributes
        assert a[semconv.MODEL_NAME] == "churn" and semconv.MODEL_VERSION not in a, dict(a)
        assert a[semconv.PREDICTION_ID] == stranger
    counts = inst.flush().points(semconv.OUTCOME_COUNT)
    assert {(p.attributes.get(semconv.MODEL_NAME), p.value) for p in counts} == {("churn", 1)}


def test_outcome_records_without_any_instrumentation_go_to_the_global_provider():
    # no Telemetry: a feedback-only service still emits records (to the no-op provider here)
    assert otel_ml.record_outcome(f"{'1' * 32}-{'2' * 16}-0", True) is False


def test_parse_and_mask_helpers():
    parsed = parse_prediction_id(f"{'A' * 32}-{'b' * 16}-7")
    assert parsed.prefix == f"{'a' * 32}-{'b' * 16}" and parsed.row == 7
    assert json.loads(masked_row({"a": float("nan"), "b": np.int64(3), "c": "x"}, frozenset({"c"}))) == {
        "a": None, "b": 3, "c": "<masked>"}


def test_documentation_lists_every_record_attribute_in_semconv():
    names = {v for k, v in vars(semconv).items() if k.isupper() and isinstance(v, str)}
    for section in ("Prediction record", "Outcome record"):
        assert set(documented(section)) <= names
