"""Outcomes: joins with recent predictions in bounded memory, and performance equal to sklearn.metrics."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import otel_ml
from otel_ml import outcomes, semconv, set_model_identity
from otel_ml.outcomes import PendingPredictions, classification_metrics, regression_metrics, roc_auc


@pytest.fixture
def tracked(make):
    """``tracked(**config overrides)``: an instrumented process whose predictions are kept for outcomes."""

    def factory(**overrides):
        inst = make(**overrides)
        outcomes.tracker(inst.telemetry)  # what FlaskMLInstrumentor does when it starts
        return inst

    return factory


@pytest.fixture
def instrumented(tracked):
    return tracked()


def prefix_of(span) -> str:
    """``<trace id>-<span id>`` of a model span's prediction ids (row i's id is ``<prefix>-<i>``)."""
    return span.attributes[semconv.PREDICTION_ID].rsplit("-", 1)[0]


def performance(inst, name: str | None = None) -> dict[str, float]:
    points = inst.flush().points(semconv.PERFORMANCE)
    return {p.attributes[semconv.METRIC_NAME]: p.value for p in points
            if name is None or p.attributes[semconv.MODEL_NAME] == name}


def outcome_counts(inst) -> dict[bool, int]:
    return {p.attributes[semconv.OUTCOME_JOINED]: p.value for p in inst.flush().points(semconv.OUTCOME_COUNT)}


@pytest.fixture(scope="module")
def binary(breast_cancer):
    X, y = breast_cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=50, C=0.05)).fit(X.iloc[:300], y.iloc[:300])
    set_model_identity(model, name="binary")
    return model, X.iloc[300:], y.iloc[300:]


# -- performance equals sklearn.metrics ---------------------------------------------------------------------
def test_binary_classification_metrics_equal_sklearn(instrumented, binary):
    model, X, y = binary
    ids, actual = [], []
    for i in range(0, 240, 8):  # batches of 8: row ids <trace>-<span>-0..7
        batch = X.iloc[i:i + 8]
        model.predict_proba(batch)
        prefix = prefix_of(instrumented.roots()[-1])
        ids += [f"{prefix}-{r}" for r in range(len(batch))]
        actual += y.iloc[i:i + 8].tolist()
    rng = np.random.default_rng(0)
    flipped = [a if rng.random() > 0.15 else 1 - a for a in actual]  # some wrong outcomes: metrics below 1
    for prediction_id, a in zip(ids, flipped):
        assert otel_ml.record_outcome(prediction_id, a)
    proba = model.predict_proba(X.iloc[:240])
    pred = model.classes_[proba.argmax(axis=1)]
    got = performance(instrumented)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(flipped, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(flipped, pred))
    assert got["recall"] == pytest.approx(skm.recall_score(flipped, pred))
    assert got["f1"] == pytest.approx(skm.f1_score(flipped, pred))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(flipped, proba[:, 1]))
    assert got["log_loss"] == pytest.approx(skm.log_loss(flipped, proba))
    assert got["brier"] == pytest.approx(skm.brier_score_loss(flipped, proba[:, 1]))
    assert 0.5 < got["accuracy"] < 1.0
    assert outcome_counts(instrumented) == {True: 240}


def test_multiclass_metrics_equal_sklearn(instrumented):
    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=30, C=0.02).fit(X, y)
    set_model_identity(model, name="iris")
    rng = np.random.default_rng(1)
    order = rng.permutation(len(X))
    actual, ids = [], []
    for i in order[:120]:
        model.predict_proba(X[i:i + 1])
        span = instrumented.roots()[-1]
        ids.append(f"{prefix_of(span)}-0")
        actual.append(int(y[i]) if rng.random() > 0.2 else int(rng.integers(3)))
    for prediction_id, a in zip(ids, actual):
        otel_ml.record_outcome(prediction_id, a)
    proba = model.predict_proba(X[order[:120]])
    pred = proba.argmax(axis=1)
    got = performance(instrumented, "iris")
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(actual, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(actual, pred, average="macro", zero_division=0))
    assert got["recall"] == pytest.approx(skm.recall_score(actual, pred, average="macro", zero_division=0))
    assert got["f1"] == pytest.approx(skm.f1_score(actual, pred, average="macro", zero_division=0))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(actual, proba, multi_class="ovr", average="macro"))
    assert got["log_loss"] == pytest.approx(skm.log_loss(actual, proba, labels=[0, 1, 2]))
    assert got["brier"] == pytest.approx(skm.brier_score_loss(actual, proba, labels=[0, 1, 2]))


def test_regression_metrics_equal_sklearn(instrumented):
    X, y = load_diabetes(return_X_y=True)
    model = LinearRegression().fit(X[:300], y[:300])
    set_model_identity(model, name="diabetes")
    model.predict(X[300:400])
    span = instrumented.roots()[-1]
    prefix = prefix_of(span)
    for r in range(100):
        otel_ml.record_outcome(f"{prefix}-{r}", float(y[300 + r]))
    pred = model.predict(X[300:400])
    got = performance(instrumented, "diabetes")
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y[300:400], pred))
    assert got["rmse"] == pytest.approx(skm.root_mean_squared_error(y[300:400], pred))
    assert got["r2"] == pytest.approx(skm.r2_score(y[300:400], pred))


@pytest.mark.parametrize("seed", range(5))
def test_metric_functions_equal_sklearn_on_random_pairs_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    p1 = np.round(rng.random(n), 1)  # many ties
    proba = np.column_stack([1 - p1, p1])
    pred = (p1 >= 0.5).astype(int)
    got = classification_metrics(y.astype(str), labels=pred.astype(str), scores=p1, proba=proba, classes=["0", "1"])
    got.update(classification_metrics(y.astype(str), scores=p1, classes=["0", "1"]))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p1))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, p1))
    t, v = rng.normal(size=n), rng.normal(size=n)
    reg = regression_metrics(t, v)
    assert reg["mae"] == pytest.approx(skm.mean_absolute_error(t, v))
    assert reg["rmse"] == pytest.approx(skm.root_mean_squared_error(t, v))
    assert reg["r2"] == pytest.approx(skm.r2_score(t, v))


def test_undefined_metrics_are_left_out():
    assert np.isnan(roc_auc(np.array([True, True]), np.array([0.2, 0.3])))
    assert "r2" not in regression_metrics(np.array([1.0]), np.array([2.0]))
    assert regression_metrics(np.array([2.0, 2.0]), np.array([2.0, 2.0]))["r2"] == 1.0  # sklearn's force_finite
    got = classification_metrics(["1", "1"], labels=np.array(["0", "0"]), classes=["0", "1"])
    assert got["precision"] == 0.0 and got["f1"] == 0.0  # sklearn's zero_division=0 value


def test_roc_auc_is_exported_only_once_both_classes_were_seen(instrumented, binary):
    model, X, y = binary
    model.predict_proba(X.iloc[:1])
    span = instrumented.roots()[-1]
    otel_ml.record_outcome(f"{prefix_of(span)}-0", 1)
    got = performance(instrumented)
    assert "roc_auc" not in got and got["accuracy"] in (0.0, 1.0)


def test_window_keeps_the_last_pairs(tracked, binary):
    inst = tracked(performance_window=10)
    model, X, y = binary
    model.predict_proba(X.iloc[:30])
    span = inst.roots()[-1]
    prefix = prefix_of(span)
    actual = [0] * 20 + y.iloc[20:30].tolist()
    for r in range(30):
        otel_ml.record_outcome(f"{prefix}-{r}", actual[r])
    pred = model.predict(X.iloc[20:30])
    assert performance(inst)["accuracy"] == pytest.approx(skm.accuracy_score(actual[20:], pred))


def test_float_outcome_matches_integer_classes(instrumented, binary):
    model, X, y = binary
    model.predict(X.iloc[:1])
    span = instrumented.roots()[-1]
    otel_ml.record_outcome(f"{prefix_of(span)}-0",
                           float(model.predict(X.iloc[:1])[0]))
    assert performance(instrumented)["accuracy"] == 1.0


# -- joins and bounded memory ---------------------------------------------------------------------------
def test_unknown_duplicate_and_out_of_range_outcomes_are_not_joined(instrumented, binary):
    model, X, _ = binary
    model.predict_proba(X.iloc[:2])
    span = instrumented.roots()[-1]
    prefix = prefix_of(span)
    assert otel_ml.record_outcome(f"{prefix}-0", 1) is True
    assert otel_ml.record_outcome(f"{prefix}-0", 1) is False  # a second outcome for the same row
    assert otel_ml.record_outcome(f"{prefix}-2", 1) is False  # no such row
    assert otel_ml.record_outcome(f"{'1' * 32}-{'2' * 16}-0", 1) is False  # another replica's prediction
    assert outcome_counts(instrumented) == {True: 1, False: 3}
    # the model is known (the only one predicting here), so the unjoined counts carry it too
    points = instrumented.flush().points(semconv.OUTCOME_COUNT)
    assert all(p.attributes[semconv.MODEL_NAME] == "binary" for p in points)


@pytest.mark.parametrize("bad", ["", "abc", f"{'g' * 32}-{'0' * 16}-0", f"{'0' * 32}-{'0' * 16}-x",
                                 f"{'0' * 31}-{'0' * 16}-0", 12])
def test_malformed_ids_raise(instrumented, bad):
    with pytest.raises(ValueError):
        otel_ml.record_outcome(bad, 1)


def test_pending_predictions_are_bounded_by_rows(tracked, binary):
    inst = tracked(outcome_max_pending=10)
    model, X, _ = binary
    for i in range(6):
        model.predict_proba(X.iloc[2 * i:2 * i + 2])  # 6 predictions of 2 rows: the first one is evicted
    tracker = outcomes.tracker(inst.telemetry)
    tracker.take_predictions()  # what the aggregator thread does after its next drain
    assert tracker.pending.rows == 10 and len(tracker.pending) == 5
    first, last = inst.roots()[0], inst.roots()[-1]
    assert not otel_ml.record_outcome(f"{prefix_of(first)}-0", 1)
    assert otel_ml.record_outcome(f"{prefix_of(last)}-1", 1)
    model.predict_proba(X.iloc[:11])  # larger than the whole store: not kept
    tracker.take_predictions()
    assert tracker.pending.rows == 10


def test_pending_predictions_expire(tracked, binary):
    inst = tracked(outcome_max_age_seconds=0.2)
    model, X, _ = binary
    model.predict_proba(X.iloc[:1])
    span = inst.roots()[-1]
    time.sleep(0.3)
    assert not otel_ml.record_outcome(f"{prefix_of(span)}-0", 1)
    assert outcomes.tracker(inst.telemetry).pending.rows == 0


def test_pending_store_memory_stays_flat():
    pending = PendingPredictions(max_rows=1000, max_age=3600)

    class P:
        def __init__(self, i):
            self.prediction_id, self.n_rows, self.monotonic = f"{i:048x}", 1, time.monotonic()

    for i in range(50_000):
        pending.add(P(i))
    assert len(pending) == 1000 and pending.find(f"{49_999:048x}") is not None


def test_outcomes_name_a_model_when_several_predict(tracked, binary):
    inst = tracked()
    model, X, _ = binary
    other = LogisticRegression(max_iter=100).fit(X.iloc[:50, :3], (X.iloc[:50, 0] > X.iloc[:, 0].median()))
    set_model_identity(other, name="other")
    model.predict(X.iloc[:1])
    other.predict(X.iloc[:1, :3])
    otel_ml.record_outcome(f"{'1' * 32}-{'2' * 16}-0", 1)  # ambiguous: no model
    otel_ml.record_outcome(f"{'1' * 32}-{'3' * 16}-0", 1, model="other")
    otel_ml.record_outcome(f"{'1' * 32}-{'4' * 16}-0", 1, model=model)
    points = inst.flush().points(semconv.OUTCOME_COUNT)
    assert sorted(p.attributes.get(semconv.MODEL_NAME, "-") for p in points) == ["-", "binary", "other"]


def _child_pending_rows(conn) -> None:
    from otel_ml.instrumentation.sklearn import active_telemetry

    conn.send(outcomes.tracker(active_telemetry()).pending.rows)


def test_a_forked_child_starts_with_no_pending_predictions(instrumented, binary):
    model, X, _ = binary
    model.predict_proba(X.iloc[:3])
    tracker = outcomes.tracker(instrumented.telemetry)
    tracker.take_predictions()
    assert tracker.pending.rows == 3
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_child_pending_rows, args=(child,))
    process.start()
    assert parent.recv() == 0
    process.join(10)


def test_record_outcome_without_instrumentation_does_not_fail():
    assert otel_ml.record_outcome(f"{'1' * 32}-{'2' * 16}-0", "good") is False
