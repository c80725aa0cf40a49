"""The scikit-learn instrumentor through its programmatic API, with in-memory exporters."""

from __future__ import annotations

import hashlib
import pickle
import threading
import time

import joblib
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import StatusCode
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from otel_ml import semconv, set_model_identity


@pytest.fixture(scope="module")
def data(breast_cancer):
    X, y = breast_cancer
    return X, y


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)


def test_single_row_span_has_identity_and_prediction(instrumented, fitted, data):
    X, _ = data
    proba = fitted.predict_proba(X.iloc[:1])
    (span,) = instrumented.roots()
    a = span.attributes
    assert span.name == "predict_proba Pipeline"
    assert a[semconv.OPERATION_NAME] == "predict_proba"
    assert a[semconv.MODEL_NAME] == "Pipeline" and a[semconv.MODEL_CLASS] == "Pipeline"
    assert a[semconv.MODEL_TYPE] == semconv.MODEL_TYPE_BINARY
    assert a[semconv.INPUT_ROWS] == 1 and a[semconv.INPUT_FEATURES] == 30
    assert a[semconv.PREDICTION_SCORE] == pytest.approx(proba[0, 1])
    assert a[semconv.PREDICTION_LABEL] == str(fitted.classes_[proba[0].argmax()])
    assert a[semconv.PREDICTION_CONFIDENCE_MIN] == pytest.approx(proba[0].max())
    trace_id = f"{span.context.trace_id:032x}"
    assert a[semconv.PREDICTION_ID] == f"{trace_id}-{span.context.span_id:016x}-0"
    # one row never yields per-feature summaries: they would be the row itself
    assert semconv.INPUT_FEATURE_MEAN not in a


def test_pipeline_steps_are_children_and_nothing_is_duplicated(instrumented, fitted, data):
    X, _ = data
    fitted.predict(X.iloc[:5])  # Pipeline.predict -> scaler.transform + LogisticRegression.predict
    spans = instrumented.finished()
    (root,) = [s for s in spans if s.parent is None]
    children = [s for s in spans if s.parent is not None]
    assert sorted(s.name for s in children) == ["predict LogisticRegression", "transform StandardScaler"]
    assert all(s.parent.span_id == root.context.span_id for s in children)


def test_method_calling_another_method_is_one_span(instrumented, data):
    X, y = data
    model = LogisticRegression(max_iter=3000)
    model.fit(X, y)
    instrumented.clear_spans()
    model.score(X, y)  # score calls self.predict
    assert [s.name for s in instrumented.finished()] == ["score LogisticRegression"]


def test_meta_estimator_gives_child_spans_up_to_the_cap(make, data):
    X, y = data
    inst = make(max_child_spans=5)
    GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.1, 1.0]}, cv=2).fit(X.iloc[:200], y.iloc[:200])
    spans = inst.finished()
    roots = [s for s in spans if s.parent is None]
    assert [s.name for s in roots] == ["fit GridSearchCV"]
    assert len(spans) - 1 == 5


def test_error_keeps_the_exception_and_marks_the_span(instrumented, fitted, data):
    X, _ = data
    with pytest.raises(ValueError, match="features") as raised:
        fitted.predict(X.iloc[:3, :4].to_numpy())
    root = instrumented.roots()[0]
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes[semconv.ERROR_TYPE] == "ValueError"
    assert any(e.name == "exception" for e in root.events)
    metrics = instrumented.flush()
    assert metrics.value(semconv.OPERATION_DURATION, error__type="ValueError") == 1
    assert "features" in str(raised.value)


def test_metrics_count_rows_batches_classes_and_scores(instrumented, fitted, data):
    X, _ = data
    fitted.predict_proba(X.iloc[:100])
    fitted.predict_proba(X.iloc[:1])
    labels = fitted.predict(X.iloc[:50])
    metrics = instrumented.flush()
    model = {"ml__model__name": "Pipeline"}
    assert metrics.value(semconv.INPUT_ROWS_METRIC, ml__operation__name="predict_proba", **model) == 101
    assert metrics.value(semconv.INPUT_BATCH_SIZE, ml__operation__name="predict_proba", **model) == 2
    (scores,) = [p for p in metrics.points(semconv.PREDICTION_SCORE_METRIC)
                 if p.attributes[semconv.OPERATION_NAME] == "predict_proba"]
    assert scores.count == 101
    expected = fitted.predict_proba(X.iloc[:100])[:, 1].sum() + fitted.predict_proba(X.iloc[:1])[0, 1]
    assert scores.sum == pytest.approx(expected)
    assert list(scores.explicit_bounds) == list(semconv.SCORE_BUCKETS)
    for label in np.unique(labels):
        count = metrics.value(semconv.PREDICTION_COUNT, ml__prediction__label=str(label))
        # predict_proba labels (argmax) are counted too: 101 rows from predict_proba + 50 from predict
        proba_labels = fitted.predict(X.iloc[:100]).tolist() + fitted.predict(X.iloc[:1]).tolist()
        assert count == (labels == label).sum() + proba_labels.count(label)
    (duration,) = [p for p in metrics.points(semconv.OPERATION_DURATION)
                   if p.attributes[semconv.OPERATION_NAME] == "predict"]
    assert duration.count == 1 and duration.sum > 0


def test_batch_summaries_need_min_rows_and_hide_min_max(instrumented, fitted, data):
    X, _ = data
    fitted.predict(X.iloc[:9])
    fitted.predict(X.iloc[:10])
    small, large = instrumented.roots()
    assert semconv.INPUT_FEATURE_MEAN not in small.attributes
    a = large.attributes
    assert list(a[semconv.INPUT_FEATURE_NAMES])[:2] == ["mean radius", "mean texture"]
    assert a[semconv.INPUT_FEATURE_MEAN][0] == pytest.approx(X.iloc[:10, 0].mean())
    assert a[semconv.INPUT_FEATURE_STD][0] == pytest.approx(X.iloc[:10, 0].std(ddof=0))
    assert semconv.INPUT_FEATURE_MIN not in a and semconv.INPUT_FEATURE_MAX not in a


def test_raw_capture_is_opt_in_and_masks(make, fitted, data):
    X, _ = data
    inst = make(capture_raw=True, mask_features=("mean texture",))
    fitted.predict(X.iloc[:10])
    a = inst.roots()[0].attributes
    assert a[semconv.INPUT_FEATURE_MIN][0] == pytest.approx(X.iloc[:10, 0].min())
    assert a[semconv.INPUT_FEATURE_MAX][1] == 0.0  # masked


def test_no_raw_value_leaves_by_default(instrumented, data):
    X, y = data
    sentinel = 987654.321
    model = LogisticRegression(max_iter=3000).fit(X, y)
    row = X.iloc[:1].copy()
    row.iloc[0, 3] = sentinel
    model.predict_proba(row)
    batch = X.iloc[:10].copy()
    batch.iloc[4, 3] = sentinel
    model.predict(batch)
    instrumented.flush()
    dumped = repr([dict(s.attributes) for s in instrumented.finished()])
    dumped += repr(instrumented.metrics.exports)
    assert "987654" not in dumped


def test_attribute_count_is_bounded_whatever_the_features(instrumented):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 500))
    y = (X[:, 0] > 0).astype(int)
    model = LogisticRegression(max_iter=200).fit(X, y)
    model.predict_proba(X[:50])
    root = [s for s in instrumented.roots() if s.name.startswith("predict_proba")][0]
    assert len(root.attributes) < 40
    assert len(root.attributes[semconv.INPUT_FEATURE_NAMES]) == 32
    assert root.attributes[semconv.INPUT_FEATURES_TRUNCATED] == 468


def test_identity_from_pickle_and_joblib_files(instrumented, fitted, tmp_path):
    path = tmp_path / "credit_risk.pkl"
    with open(path, "wb") as fh:
        pickle.dump(fitted, fh)
    with open(path, "rb") as fh:
        loaded = pickle.load(fh)
    loaded.predict(np.zeros((1, 30)))
    a = instrumented.roots()[-1].attributes
    assert a[semconv.MODEL_NAME] == "credit_risk"
    assert a[semconv.MODEL_ID] == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    joblib.dump(fitted, tmp_path / "churn.joblib")
    joblib.load(tmp_path / "churn.joblib").predict(np.zeros((1, 30)))
    assert instrumented.roots()[-1].attributes[semconv.MODEL_NAME] == "churn"


def test_identity_from_environment_and_code(make, fitted, data):
    X, _ = data
    inst = make(model_name="fraud", model_version="7")
    fitted.predict(X.iloc[:1])
    assert inst.roots()[-1].attributes[semconv.MODEL_VERSION] == "7"
    assert inst.roots()[-1].name == "predict fraud"
    other = LinearRegression().fit(X.iloc[:, :3], X.iloc[:, 3])
    set_model_identity(other, name="area", version="2")
    other.predict(X.iloc[:2, :3])
    a = inst.roots()[-1].attributes
    assert (a[semconv.MODEL_NAME], a[semconv.MODEL_VERSION], a[semconv.MODEL_TYPE]) == ("area", "2", "regression")


def test_classes_defined_after_instrumentation_are_patched(instrumented, data):
    X, y = data

    class Threshold(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):
            self.classes_ = np.unique(y)
            return self

        def predict(self, X):
            return (np.asarray(X)[:, 0] > 15).astype(int)

    model = Threshold().fit(X, y)
    model.predict(X.iloc[:3])
    assert [s.name for s in instrumented.finished()] == ["fit Threshold", "predict Threshold"]


def test_column_transformer_and_random_forest(instrumented, data):
    X, y = data
    pre = ColumnTransformer([("scale", StandardScaler(), list(X.columns[:10]))], remainder="passthrough")
    model = make_pipeline(pre, RandomForestClassifier(n_estimators=5, random_state=0)).fit(X, y)
    instrumented.clear_spans()
    model.predict_proba(X.iloc[:20])
    names = [s.name for s in instrumented.finished()]
    assert names.count("predict_proba Pipeline") == 1
    assert "transform ColumnTransformer" in names and "predict_proba RandomForestClassifier" in names


def test_uninstrument_restores_every_method(make, fitted, data):
    inst = make()
    inst.instrumentor.uninstrument()
    original = LogisticRegression.__dict__["predict_proba"]
    original_load = pickle.load
    inst = make()
    assert LogisticRegression.__dict__["predict_proba"] is not original
    inst.instrumentor.uninstrument()
    assert LogisticRegression.__dict__["predict_proba"] is original
    assert pickle.load is original_load
    fitted.predict(data[0].iloc[:1])
    assert inst.finished() == []


def test_concurrent_calls_are_all_counted(instrumented, fitted, data):
    X, _ = data
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                fitted.predict_proba(X.iloc[:3])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(instrumented.roots()) == 400
    metrics = instrumented.flush()
    assert metrics.value(semconv.INPUT_ROWS_METRIC, ml__operation__name="predict_proba") == 1200


def test_failures_inside_otel_ml_are_counted_not_raised(instrumented, fitted, data, monkeypatch, caplog):
    X, _ = data
    telemetry = instrumented.telemetry

    def broken(*args, **kwargs):
        raise RuntimeError("bug in otel-ml")

    monkeypatch.setattr(telemetry, "_span_attributes", broken)
    expected = fitted.predict_proba(X.iloc[:2])
    assert np.array_equal(fitted.predict_proba(X.iloc[:2]), expected)
    metrics = instrumented.flush()
    assert metrics.value(semconv.INSTRUMENTATION_ERRORS, error__type="RuntimeError") == 2
    assert sum("bug in otel-ml" in r.getMessage() or r.exc_info is not None for r in caplog.records) == 1


def test_missing_values_are_counted_per_feature(instrumented):
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    y = (X[:, 0] > 0).astype(int)
    model = HistGradientBoostingClassifier(max_iter=10).fit(X, y)
    batch = X[:20].copy()
    batch[:5, 1] = np.nan
    model.predict(batch)
    metrics = instrumented.flush()
    assert metrics.value(semconv.INPUT_MISSING, ml__feature__name="x1") == 5
    assert metrics.value(semconv.INPUT_MISSING, ml__feature__name="x0") == 0


def test_missing_values_of_batches_beyond_the_summary_sample_are_counted_exactly(make):
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 2))
    model = HistGradientBoostingClassifier(max_iter=5).fit(X, (X[:, 0] > 0).astype(int))
    inst = make(summary_max_rows=100)
    batch = rng.normal(size=(1000, 2))
    batch[1::2, 1] = np.nan  # every odd row: the span's sample of every 10th row sees none of them
    model.predict(batch)
    (span,) = inst.finished()
    assert span.attributes[semconv.INPUT_SAMPLED_ROWS] == 100
    assert list(span.attributes[semconv.INPUT_FEATURE_MISSING]) == [0, 0]
    metrics = inst.flush()
    assert metrics.value(semconv.INPUT_MISSING, ml__feature__name="x1") == 500
    assert metrics.value(semconv.INPUT_MISSING, ml__feature__name="x0") == 0


def test_calls_under_an_unsampled_parent_get_no_span_but_are_counted(instrumented, fitted, data):
    from opentelemetry import context, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    X, _ = data
    parent = SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    seen = []
    instrumented.telemetry.listeners.append(seen.append)
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        expected = fitted.predict_proba(X.iloc[:3])
        fitted.predict_proba(X.iloc[:1])
    finally:
        context.detach(token)
    assert np.array_equal(fitted.predict_proba(X.iloc[:3]), expected)
    traces = {span.context.trace_id for span in instrumented.finished()}
    assert len(traces) == 1 and 0xABC not in traces  # only the call outside the unsampled trace has spans
    ids = [obs.prediction_id for obs in seen[:2]]
    assert all(i.startswith(f"{0xABC:032x}-") for i in ids) and ids[0] != ids[1]
    metrics = instrumented.flush()
    assert metrics.value(semconv.INPUT_ROWS_METRIC, ml__operation__name="predict_proba") == 7


def test_training_spans_can_be_switched_off(make, data):
    X, y = data
    inst = make(training_enabled=False)
    model = LogisticRegression(max_iter=3000).fit(X, y)
    model.predict(X.iloc[:2])
    assert [s.name for s in inst.finished()] == ["predict LogisticRegression"]


def test_error_text_quoting_inputs_stays_in_the_process(make):
    import pandas as pd
    from sklearn.preprocessing import OneHotEncoder

    encoder = OneHotEncoder().fit(pd.DataFrame({"segment": ["a", "b"]}))
    bad = pd.DataFrame({"segment": ["secret-segment-42"]})
    inst = make()
    with pytest.raises(ValueError, match="secret-segment-42"):  # the caller still gets the full message
        encoder.transform(bad)
    span = inst.roots()[-1]
    assert span.status.description == "ValueError"
    assert "secret-segment-42" not in repr([(e.name, dict(e.attributes)) for e in span.events])
    inst.instrumentor.uninstrument()
    inst = make(capture_raw=True)
    with pytest.raises(ValueError):
        encoder.transform(bad)
    assert "secret-segment-42" in inst.roots()[-1].status.description


def test_prediction_records_need_no_flask(make):
    from otel_ml.outcomes import tracker

    plain = make()
    first = plain.telemetry
    assert first.listeners == []  # nothing kept per prediction unless asked for
    plain.instrumentor.uninstrument()
    inst = make(prediction_records_rate=1.0)
    assert inst.telemetry is not first
    (listener,) = inst.telemetry.listeners
    assert listener == tracker(inst.telemetry).on_observation


@pytest.mark.parametrize(("operation", "output", "labels", "is_classifier"), [
    ("predict_proba", np.array([[0.3, 0.7]]), ["no", "yes"], True),
    ("predict_proba", np.array([[0.5, 0.5]]), ["no", "yes"], True),  # a tie goes to the first class
    ("predict_proba", np.array([[0.2, 0.5, 0.3]]), ["a", "b", "c"], True),
    ("predict_proba", np.array([[0.2, 0.5, 0.3]]), None, True),
    ("predict_proba", np.array([[np.nan, 0.4]]), ["no", "yes"], True),
    ("predict_proba", np.array([[0.2, np.nan, 0.3]]), ["a", "b", "c"], True),
    ("predict_proba", np.array([[0.3, 0.3, 0.4], [0.9, 0.05, 0.05]]), ["a", "b", "c"], True),
    ("predict_proba", np.array([[0.4, 0.6]], dtype=object), ["no", "yes"], True),
    ("predict_proba", np.empty((1, 0)), None, True),
    ("predict_proba", np.array([[0.4, 0.6]], dtype=np.float32), ["no", "yes"], True),
    ("predict_log_proba", np.log(np.array([[0.1, 0.9]])), ["no", "yes"], True),
    ("predict", np.array(["spam"]), None, True),
    ("predict", np.array([3]), None, True),
    ("predict", np.array([2.5]), None, False),
    ("predict", np.array([[2.5]]), None, False),
    ("predict", np.array([[1.0, 2.0]]), None, False),
    ("decision_function", np.array([-1.25]), None, True),
    ("decision_function", np.array([[0.1, 0.2, 0.3]]), None, True),
    ("predict", (np.array([1.5]), np.array([0.1])), None, False),
])
def test_first_row_reading_agrees_with_the_batch_reader(operation, output, labels, is_classifier):
    from otel_ml.observation import first_prediction, read_predictions

    fast = first_prediction(operation, output, labels, is_classifier)
    full = read_predictions(operation, output, labels, is_classifier)
    if full is None:
        assert fast is None
        return
    label, score, confidence = fast
    assert label == full.first_label()
    for got, want in ((score, full.scores[0] if full.scores is not None else None), (confidence, full.confidence_min)):
        assert (got is None and want is None) or got == pytest.approx(want, nan_ok=True)


def test_joblib_work_of_a_model_call_is_part_of_it(instrumented, data):
    """Context variables do not follow work into joblib's workers: a forest with n_jobs must still be one
    span and one model in the metrics, and a search's process-based workers must still receive its tasks."""
    import joblib
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV

    X, y = data
    forest = RandomForestClassifier(n_estimators=8, n_jobs=2, random_state=0).fit(X, y)
    expected = forest.predict_proba(X.iloc[:5])
    assert [s.name for s in instrumented.finished()] == ["fit RandomForestClassifier",
                                                         "predict_proba RandomForestClassifier"]
    metrics = instrumented.flush()
    assert {p.attributes[semconv.MODEL_NAME] for p in metrics.points(semconv.INPUT_ROWS_METRIC)} == {
        "RandomForestClassifier"}
    search = GridSearchCV(LogisticRegression(max_iter=500), {"C": [0.1, 1.0]}, cv=2, n_jobs=2).fit(X, y)
    assert search.best_params_["C"] in (0.1, 1.0)  # loky processes: the tasks were pickled and ran
    assert [s.name for s in instrumented.roots()][-1] == "fit GridSearchCV"
    before = len(instrumented.finished())
    with joblib.parallel_backend("threading", n_jobs=2):  # worker threads: the candidates are child spans
        GridSearchCV(LogisticRegression(max_iter=500), {"C": [0.1, 1.0]}, cv=2).fit(X, y)
    spans = instrumented.finished()[before:]
    (root,) = [s for s in spans if s.parent is None]
    assert root.name == "fit GridSearchCV" and len(spans) > 1
    assert all(s.parent.span_id == root.context.span_id for s in spans if s is not root)
    instrumented.instrumentor.uninstrument()
    assert np.array_equal(forest.predict_proba(X.iloc[:5]), expected)


def test_leaf_span_is_written_by_the_aggregator_thread_under_the_callers_parent(make, data, monkeypatch):
    """A leaf model's span leaves the call to the aggregator thread: it arrives within the SDK's batch delay
    (``OTEL_BSP_SCHEDULE_DELAY``) with no flush, as a child of the span active during the call, timed like
    the call, named by its prediction id."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    instrumented = make()
    assert instrumented.telemetry.aggregator.flush_interval == 0.2
    X, y = data
    model = LogisticRegression(max_iter=3000).fit(X, y)
    instrumented.clear_spans()
    tracer = trace.get_tracer("test", tracer_provider=instrumented.telemetry._tracer_provider)
    before = time.time_ns()
    with tracer.start_as_current_span("request") as parent:
        model.predict_proba(X.iloc[:1])
    after = time.time_ns()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(instrumented.spans.get_finished_spans()) < 2:
        time.sleep(0.05)
    spans = {s.name: s for s in instrumented.spans.get_finished_spans()}  # no drain: the thread wrote it
    span = spans["predict_proba LogisticRegression"]
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert before <= span.start_time <= span.end_time <= after
    assert span.attributes[semconv.PREDICTION_ID] == (
        f"{span.context.trace_id:032x}-{span.context.span_id:016x}-0")


class TaggingProcessor(SpanProcessor):
    """A processor with an ``on_start`` of its own: it must see live spans, so otel-ml writes through the
    SDK's tracer when one is installed."""

    def on_start(self, span, parent_context=None):
        span.set_attribute("tagged", True)


@pytest.mark.parametrize("capture_raw", [False, True])
def test_every_span_writer_writes_the_same_spans(make, data, capture_raw):
    """otel-ml writes a model call's spans three ways: as finished spans handed to the SDK's processors
    (the default: they only export), through the SDK's tracer with preset ids (a processor with an
    ``on_start`` of its own), or right after the call (a tracer that is not the SDK's, so no preset ids).
    The same spans either way: names, kinds, parents, attributes, events, status, resource and scope, a
    pipeline's steps as children of its span, errors included."""
    from otel_ml.spans import FinishedSpanTracer

    X, y = data
    leaf = LogisticRegression(max_iter=3000).fit(X, y)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(X, y)
    found = []
    for writer in ("finished", "sdk", "immediate"):
        inst = make(capture_raw=capture_raw)
        if writer == "sdk":
            inst.telemetry._tracer_provider.add_span_processor(TaggingProcessor())
        inst.telemetry._ensure_started()
        background = inst.telemetry._background
        assert (type(background[0]) is FinishedSpanTracer) == (writer != "sdk")
        if writer == "immediate":
            inst.telemetry._background = None
        before = time.time_ns()
        for model in (leaf, pipeline):
            model.predict_proba(X.iloc[:1])
            with pytest.raises(ValueError):
                model.predict_proba(X.iloc[:1, :3])
        spans = inst.finished()
        # the SDK's tracer hands over its span's bounded containers (locks and all), otel-ml plain ones
        assert all(type(s._attributes) is dict and type(s._events) is tuple for s in spans) == (writer == "finished")
        assert all(before <= s.start_time <= s.end_time <= time.time_ns() for s in spans)
        by_id = {s.context.span_id: s.name for s in spans}
        found.append([(s.name, s.kind, s.status.status_code, s.status.description,
                       by_id.get(s.parent.span_id) if s.parent else None, s.context.trace_flags,
                       s.resource.attributes, s.instrumentation_scope,
                       {k: v for k, v in s.attributes.items() if k not in (semconv.PREDICTION_ID, "tagged")},
                       [(e.name, sorted(e.attributes)) for e in s.events]) for s in spans])
        assert all(semconv.PREDICTION_ID in s.attributes for s in spans
                   if s.parent is None and s.status.status_code != StatusCode.ERROR)
        assert all(s.attributes.get("tagged") for s in spans) == (writer == "sdk")
        inst.instrumentor.uninstrument()
    assert found[0] == found[1] == found[2]
    names = [(span[0], span[4]) for span in found[0]]
    assert ("predict_proba Pipeline", None) in names and ("transform StandardScaler", "predict_proba Pipeline") in names
    events = {name for span in found[0] for name, _ in span[-1]}
    assert events == {"exception"}


def test_a_processor_added_later_sees_the_spans_start(make, data):
    """A span processor with an ``on_start`` of its own added after otel-ml started writing finished spans:
    the spans written from then on go through the SDK's tracer, so it sees them start."""
    X, y = data
    model = LogisticRegression(max_iter=3000).fit(X, y)
    inst = make()
    model.predict_proba(X.iloc[:1])
    assert [s.attributes.get("tagged", False) for s in inst.finished()] == [False]  # written: a finished span
    inst.telemetry._tracer_provider.add_span_processor(TaggingProcessor())
    model.predict_proba(X.iloc[:1])
    assert [s.attributes.get("tagged", False) for s in inst.finished()] == [False, True]


@pytest.mark.parametrize("end", ["force_flush", "shutdown"])
def test_flushing_the_provider_writes_the_spans_otel_ml_holds(make, data, end):
    """A job that calls its provider's force_flush (or shutdown) before exiting gets every model span,
    although they are written on otel-ml's thread: otel-ml writes what it holds first."""
    X, y = data
    model = LogisticRegression(max_iter=3000).fit(X, y)
    inst = make()
    inst.clear_spans()
    model.predict_proba(X.iloc[:2])
    getattr(inst.telemetry._tracer_provider, end)()
    assert [s.name for s in inst.spans.get_finished_spans()] == ["predict_proba LogisticRegression"]


@pytest.mark.parametrize("score, confidence, want", [
    (0.25, 0.75, (0.25, 0.75)),
    (np.float64(0.5), np.float32(0.5), (0.5, 0.5)),
    (float("nan"), float("inf"), (0.0, 0.0)),
    (-np.inf, 2.0, (0.0, 2.0)),
])
def test_one_row_span_attributes_are_finite_floats(score, confidence, want):
    """OTLP JSON cannot carry NaN or infinities: a one-row prediction's score and confidence become 0 then."""
    from otel_ml.telemetry import _row_attributes

    attributes = _row_attributes("yes", score, confidence)
    got = (attributes[semconv.PREDICTION_SCORE], attributes[semconv.PREDICTION_CONFIDENCE_MIN])
    assert got == want and all(type(v) is float for v in got)
    assert attributes[semconv.PREDICTION_LABEL] == "yes"


def test_a_sampler_that_reads_the_context_sees_the_calls_context(make, data):
    """otel-ml keeps a call's parent span context only, not the whole context, until it writes the span,
    when the sampler reads nothing else (the SDK's own samplers); a sampler of its own that reads context
    values (here baggage) gets the context the call ran in."""
    from opentelemetry import baggage, context
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class BaggageSampler(Sampler):
        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None):
            keep = baggage.get_baggage("ml.trace", parent_context) == "yes"
            return SamplingResult(Decision.RECORD_AND_SAMPLE if keep else Decision.DROP)

        def get_description(self):
            return "BaggageSampler"

    X, y = data
    model = LogisticRegression(max_iter=3000).fit(X, y)
    for sampler, keeps_context in ((BaggageSampler(), True), (None, False)):
        inst = make(sampler=sampler)
        telemetry = inst.telemetry
        telemetry._ensure_started()
        assert telemetry._span_context_only is not keeps_context
        for flag in ("yes", "no"):
            token = context.attach(baggage.set_baggage("ml.trace", flag))
            try:
                model.predict_proba(X.iloc[:1])
            finally:
                context.detach(token)
        assert len(inst.finished()) == (1 if keeps_context else 2)
        inst.instrumentor.uninstrument()
