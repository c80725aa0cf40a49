"""Baselines found without code, validation on the request path, drift windows off it."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from otel_ml import semconv
from otel_ml.baseline import Baseline
from otel_ml.drift import psi
from otel_ml.validation import InputValidationError

RNG = np.random.default_rng(7)
X = RNG.normal(size=(4000, 3))
Y = (X[:, 0] > 0).astype(int)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A pickled pipeline with ``credit.baseline.json`` beside it."""
    folder = tmp_path_factory.mktemp("models")
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y)
    with open(folder / "credit.pkl", "wb") as fh:
        pickle.dump(model, fh)
    Baseline().fit(X, scores=model.predict_proba(X)).save(folder / "credit.baseline.json")
    return folder / "credit.pkl"


def _load(path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


def test_baseline_next_to_the_model_drives_drift_gauges_and_span_flags(make, model_file):
    inst = make(drift_window_rows=500, drift_min_rows=100)
    model = _load(model_file)
    shifted = X[:500].copy()
    shifted[:, 1] += 3.0  # feature x1 moves three standard deviations
    model.predict_proba(shifted)
    metrics = inst.flush()
    key = {"ml__model__name": "credit", "ml__feature__name": "x1", "ml__drift__method": "psi"}
    assert metrics.value(semconv.DRIFT_SCORE_METRIC, **key) > 1.0
    assert metrics.value(semconv.DRIFT_SCORE_METRIC, **{**key, "ml__feature__name": "x0"}) < 0.1
    # the bin counters add up to the rows and reproduce the window's PSI exactly
    baseline = Baseline.load(model_file.with_name("credit.baseline.json"))
    counts = np.array([metrics.value(semconv.FEATURE_BIN_COUNT, ml__feature__name="x1", ml__bin__index=b)
                       for b in range(baseline.n_bins_per_feature[1])])
    assert counts.sum() == 500
    reference = np.array([metrics.value(semconv.BASELINE_BIN_FRACTION, ml__feature__name="x1", ml__bin__index=b)
                          for b in range(len(counts))])
    assert psi(reference, counts) == pytest.approx(metrics.value(semconv.DRIFT_SCORE_METRIC, **key), rel=1e-9)
    # the next call's span says the model drifted and carries the window event
    model.predict_proba(X[:1])
    span = inst.roots()[-1]
    assert span.attributes[semconv.DRIFT_DETECTED] is True
    (event,) = [e for e in span.events if e.name == semconv.EVENT_DRIFT_WINDOW]
    assert "x1" in event.attributes[semconv.FEATURE_NAME]


def test_no_drift_on_reference_like_traffic(make, model_file):
    inst = make(drift_window_rows=1000, drift_min_rows=100)
    model = _load(model_file)
    fresh = np.random.default_rng(99).normal(size=(1000, 3))
    model.predict_proba(fresh)
    metrics = inst.flush()
    assert metrics.value(semconv.DRIFT_SHARE_METRIC, ml__model__name="credit") == 0
    model.predict(fresh[:1])
    assert inst.roots()[-1].attributes[semconv.DRIFT_DETECTED] is False


def test_violations_are_counted_and_named_without_values(make, model_file):
    inst = make()
    model = _load(model_file)
    batch = X[:20].copy()
    batch[3, 2] = 1e6
    batch[4, 0] = np.inf
    with pytest.raises(ValueError):  # the model itself rejects inf: still validated and counted
        model.predict(batch)
    batch[4, 0] = 0.0
    model.predict(batch)
    metrics = inst.flush()
    assert metrics.value(semconv.VALIDATION_VIOLATIONS_METRIC, ml__feature__name="x2",
                         ml__validation__check="out_of_range") == 2
    assert metrics.value(semconv.VALIDATION_VIOLATIONS_METRIC, ml__feature__name="x0",
                         ml__validation__check="non_finite") == 1
    span = inst.roots()[-1]
    assert span.attributes[semconv.VALIDATION_VIOLATIONS] == 1
    (event,) = [e for e in span.events if e.name == semconv.EVENT_VALIDATION_VIOLATION]
    assert event.attributes[semconv.FEATURE_NAME] == "x2"
    assert semconv.FEATURE_VALUE not in event.attributes


def test_validation_switched_off_keeps_drift(make, model_file):
    """OTEL_ML_VALIDATION_ENABLED=false: no checks and no violations, even in strict mode; drift still counts."""
    inst = make(validation_enabled=False, validation_strict=True, drift_window_rows=100, drift_min_rows=100)
    model = _load(model_file)
    batch = X[:100].copy()
    batch[3, 2] = 1e6
    model.predict(batch)
    metrics = inst.flush()
    assert not metrics.points(semconv.VALIDATION_VIOLATIONS_METRIC)
    assert semconv.VALIDATION_VIOLATIONS not in inst.roots()[-1].attributes
    assert metrics.value(semconv.DRIFT_SCORE_METRIC, ml__model__name="credit", ml__feature__name="x0",
                         ml__drift__method="psi") < 0.5


@pytest.mark.parametrize("strict", [False, True])
def test_validation_runs_off_the_request_path_unless_strict(make, model_file, monkeypatch, strict):
    """Strict mode must fail the call, so it validates before the call returns; otherwise validation runs
    where the missing values and drift bins are counted, when the aggregator drains its queue."""
    from otel_ml.validation import Validator

    checked = []
    check = Validator.check
    monkeypatch.setattr(Validator, "check", lambda self, table: checked.append(table.rows_kept) or check(self, table))
    inst = make(validation_strict=strict)
    model = _load(model_file)
    model.predict(X[:3])
    assert checked == ([3] if strict else [])
    metrics = inst.flush()
    assert checked == [3]  # once
    assert metrics.value(semconv.INPUT_ROWS_METRIC, ml__operation__name="predict") == 3


def test_strict_mode_raises_before_the_model_runs(make, model_file):
    inst = make(validation_strict=True)
    model = _load(model_file)
    bad = X[:2].copy()
    bad[1, 0] = -1e9
    with pytest.raises(InputValidationError, match="x0") as raised:
        model.predict(bad)
    assert isinstance(raised.value, ValueError)
    span = inst.roots()[-1]
    assert span.attributes[semconv.ERROR_TYPE].endswith("InputValidationError")
    assert not [s for s in inst.finished() if s.parent is not None]  # no step ran
    assert model.predict(X[:2]).shape == (2,)


def test_baseline_captured_at_fit_travels_in_the_pickle(make, tmp_path):
    make(capture_baseline=True)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y)
    carried = model._otel_ml_baseline
    assert carried["format"] == "otel-ml/baseline"
    baseline = Baseline.from_model_attribute(model)
    assert baseline.feature_names == ["x0", "x1", "x2"] and baseline.score_fractions is not None
    path = tmp_path / "captured.pkl"
    path.write_bytes(pickle.dumps(model))
    # a process without otel-ml importable still unpickles and predicts
    code = ("import sys, pickle; sys.modules['otel_ml'] = None; "
            f"m = pickle.load(open({str(path)!r}, 'rb')); print(m.predict([[0.0, 0.0, 0.0]])[0])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("0", "1")


def test_one_row_calls_count_like_one_batch(make, tmp_path):
    """Streams of one-row calls (numpy rows, and DataFrames with a category) are counted in groups: the bin
    and missing-value counters end up exactly where one call with all the rows puts them."""
    import pandas as pd
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"x0": X[:, 0], "x1": X[:, 1], "colour": np.where(X[:, 2] > 0, "red", "blue")})
    model = make_pipeline(make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["colour"]),
                                                  remainder="passthrough"),
                          HistGradientBoostingClassifier(max_iter=5)).fit(frame, Y)
    with open(tmp_path / "m.pkl", "wb") as fh:
        pickle.dump(model, fh)
    Baseline().fit(frame).save(tmp_path / "m.baseline.json")
    rows = frame.iloc[:120].copy()
    rows.loc[rows.index[::7], "x1"] = np.nan

    def counters(calls):
        inst = make()
        loaded = _load(tmp_path / "m.pkl")
        for batch in calls:
            loaded.predict_proba(batch)
        metrics = inst.flush()
        inst.instrumentor.uninstrument()
        points = metrics.points(semconv.FEATURE_BIN_COUNT) + metrics.points(semconv.INPUT_MISSING)
        return {(p.attributes.get(semconv.FEATURE_NAME), p.attributes.get(semconv.BIN_INDEX)): p.value
                for p in points}

    one_by_one = counters([rows.iloc[[i]] for i in range(len(rows))])
    assert one_by_one == counters([rows])
    assert one_by_one[("x1", None)] == 18 and sum(v for (f, b), v in one_by_one.items() if f == "colour") == 120


@pytest.mark.parametrize("case", ["clean", "nan", "inf_both_signs", "huge_finite", "float32"])
def test_missing_counts_equal_a_plain_count(case):
    """The BLAS shortcut of missing counts never changes them: NaN, infinities of both signs in one column,
    finite values whose sum overflows, float32 inputs."""
    from otel_ml.frame import as_table

    rng = np.random.default_rng(5)
    X = rng.normal(size=(2000, 6))
    if case == "nan":
        X[rng.integers(0, 2000, 40), 1] = np.nan
    if case == "inf_both_signs":
        X[3, 2], X[4, 2], X[5, 4] = np.inf, -np.inf, np.inf
    if case == "huge_finite":
        X[:, 0] = 1e308
        X[7, 0] = np.nan
    if case == "float32":
        X = X.astype(np.float32)
        X[9, 5] = np.nan
    expected = (~np.isfinite(X)).sum(axis=0)
    assert as_table(X, [f"f{i}" for i in range(6)]).missing_counts().tolist() == expected.tolist()


def test_large_batches_wake_the_aggregator_and_bound_its_queue(make, monkeypatch):
    """The queue holds the callers' arrays until drained: large batches wake the aggregator thread by rows
    (no flush here), and past the row limit further calls are dropped and counted, not held."""
    import time

    from otel_ml import aggregator

    monkeypatch.setattr(aggregator, "WAKE_ROWS", 3_000)
    inst = make()
    model = LogisticRegression().fit(X, np.arange(len(X)) % 2)
    batch = X[:1000]
    for _ in range(3):  # 3,000 rows: the thread wakes and drains by itself
        model.predict(batch)
    deadline = time.monotonic() + 5
    while inst.telemetry.aggregator._queue and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not inst.telemetry.aggregator._queue and inst.telemetry.aggregator._queued_rows == 0
    monkeypatch.setattr(aggregator, "QUEUE_ROW_LIMIT", 2_500)
    monkeypatch.setattr(aggregator, "WAKE_ROWS", 10**9)
    for _ in range(3):  # the third would take the queue past 2,500 rows
        model.predict(batch)
    metrics = inst.flush()
    assert metrics.value(aggregator.DROPPED) == 1
    assert metrics.value(semconv.INPUT_ROWS_METRIC, ml__operation__name="predict") == 5_000


def test_calls_with_spans_wake_the_aggregator_sooner_than_calls_without(make, monkeypatch):
    """Spans wait for the aggregator thread, so calls with spans wake it every WAKE_SPANS calls; calls
    without (an unsampled trace) only every WAKE_EVERY calls: each wake costs the caller's thread."""
    import time

    from opentelemetry import context, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from otel_ml import aggregator

    monkeypatch.setattr(aggregator, "WAKE_SPANS", 8)
    monkeypatch.setattr(aggregator, "WAKE_EVERY", 16)
    model = LogisticRegression().fit(X, Y)
    inst = make()
    inst.telemetry.aggregator.flush_interval = 60  # no timed drain meanwhile: only wakes drain
    queue = inst.telemetry.aggregator._queue

    def queued_after(calls: int, woken: bool) -> int:
        for _ in range(calls):
            model.predict(X[:1])
        deadline = time.monotonic() + (5 if woken else 0.3)
        while time.monotonic() < deadline and not (woken and not queue):
            time.sleep(0.01)
        return len(queue)

    assert queued_after(7, woken=False) == 7
    assert queued_after(1, woken=True) == 0  # the eighth call with a span woke it
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(SpanContext(
        trace_id=1, span_id=2, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT)))))
    try:
        assert queued_after(15, woken=False) == 15  # no spans: the sixteenth call wakes it
        assert queued_after(1, woken=True) == 0
    finally:
        context.detach(token)


def test_a_refilled_row_buffer_is_counted_as_each_call_saw_it(make):
    """A streaming loop that refills one row buffer per call: the aggregator reads inputs after the calls,
    yet counts what each call was given (small numpy inputs are copied when the call starts)."""
    from sklearn.impute import SimpleImputer

    inst = make()
    model = make_pipeline(SimpleImputer(), LogisticRegression()).fit(X, np.arange(len(X)) % 2)
    buffer = np.empty((1, 3))
    for i in range(4):
        buffer[0] = X[i]
        if i == 0:
            buffer[0, 1] = np.nan  # only the first call sees a missing value
        model.predict_proba(buffer)
    metrics = inst.flush()
    assert metrics.value(semconv.INPUT_MISSING, ml__feature__name="x1") == 1


def _one_row_frames():
    import pandas as pd

    yield "numeric", pd.DataFrame({"a": [1.5], "b": [2], "c": [np.nan]})
    yield "strings", pd.DataFrame({"a": [1.0], "s": ["car"], "t": [None]}).astype({"s": "string"})
    yield "object", pd.DataFrame({"s": ["x"], "a": [3.0]}, dtype=object).astype({"a": float})
    yield "categorical", pd.DataFrame({"c": pd.Categorical(["b"], categories=["a", "b"]), "a": [0.1]})
    yield "nullable_na", pd.DataFrame({"i": pd.array([pd.NA], dtype="Int64"), "b": pd.array([True], dtype="boolean")})
    yield "bool", pd.DataFrame({"b": [True], "a": [2.0]})
    yield "datetime", pd.DataFrame({"d": pd.to_datetime(["2026-12-04"]), "a": [1.0]})
    yield "duplicate_names", pd.DataFrame([[1.0, "x", 2.0]], columns=["a", "s", "a"])
    yield "astype_views", pd.DataFrame([["12", "car"]], columns=["n", "p"]).astype({"n": "float64"})
    # Arrow-backed strings, missing: read from the Arrow data (None), as pandas reads them (NaN, pd.NA)
    yield "missing_str", pd.DataFrame({"s": pd.array([None], dtype="str"), "a": [1.0]})
    yield "missing_string", pd.DataFrame({"s": pd.array([None], dtype="string"), "t": ["car"]}).astype({"t": "string"})
    # column names: held as Arrow data only when they are an unnamed index of the default string dtype
    named = pd.DataFrame({"a": [1.0], "s": ["car"]})
    named.columns.name = "features"
    yield "named_columns", named
    yield "string_columns", pd.DataFrame([[1.0, "car"]], columns=pd.Index(["a", "s"], dtype="string"))
    yield "numbered_columns", pd.DataFrame([[1.0, "car"]])


@pytest.mark.parametrize("case, df", list(_one_row_frames()), ids=[c for c, _ in _one_row_frames()])
def test_a_one_row_frame_snapshot_reads_as_the_frame(case, df):
    """What the aggregator reads from a queued one-row DataFrame's snapshot is what it read from the frame."""
    from otel_ml import frame

    row = frame.snapshot(df)
    assert type(row) is frame.RowSnapshot and row.shape == df.shape
    want, got = frame.as_table(df), frame.as_table(row)
    assert (got.names, got.kinds, got.numeric_index, got.n_rows) == (want.names, want.kinds, want.numeric_index, 1)
    np.testing.assert_array_equal(got.numeric, want.numeric)
    assert {j: [str(v) for v in c] for j, c in got.categorical.items()} == {
        j: [str(v) for v in c] for j, c in want.categorical.items()}
    again = frame.materialize(row)
    assert again.equals(df) and list(again.dtypes) == list(df.dtypes)
    assert again.columns.equals(df.columns) and (again.columns.dtype, again.columns.name) == (df.columns.dtype,
                                                                                              df.columns.name)
    assert frame.feature_names_of(row) == frame.feature_names_of(df) and frame.n_features_of(row) == df.shape[1]


def test_a_snapshot_holds_few_tracked_objects():
    import gc

    import pandas as pd

    from otel_ml import frame

    def tracked(root) -> int:
        seen, stack, count = set(), [root], 0
        while stack:
            obj = stack.pop()
            if id(obj) in seen or isinstance(obj, type):
                continue
            seen.add(id(obj))
            count += gc.is_tracked(obj)
            stack.extend(gc.get_referents(obj))
        return count

    strings = pd.DataFrame([["12", "car", "4", "own"] * 5], columns=[f"c{i}" for i in range(20)])
    strings = strings.astype({f"c{i}": "float64" for i in range(0, 20, 2)})  # ten columns of pandas' str dtype
    assert tracked(frame.snapshot(strings)) <= 10 + 5  # the Arrow data of each, the names' too, a few more
    df = strings.astype({f"c{i}": "string" for i in range(1, 20, 2)})  # nullable strings: their arrays are held
    assert tracked(frame.snapshot(df)) * 3 < tracked(df)
    one_row_only = type(frame.snapshot(df.iloc[:0])), type(frame.snapshot(pd.concat([df, df])))
    assert one_row_only == (pd.DataFrame, pd.DataFrame)


def test_a_one_row_frame_call_is_queued_as_a_snapshot_and_counted_as_the_frame(make):
    """The model gets the caller's DataFrame and answers as without otel-ml; the queue holds a snapshot,
    from which the missing values and the span's feature count are what the frame has."""
    import pandas as pd
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    from otel_ml import frame

    data = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "s": np.where(Y == 1, "yes", "no")}).astype({"s": "string"})
    model = make_pipeline(make_column_transformer((SimpleImputer(), ["a", "b"]), (OneHotEncoder(), ["s"])),
                          LogisticRegression()).fit(data, Y)
    rows = [data.iloc[[i]].copy() for i in range(3)]
    rows[0].loc[rows[0].index[0], "b"] = np.nan
    plain = [model.predict_proba(r) for r in rows]
    inst = make()
    got = [model.predict_proba(r) for r in rows]
    assert all(np.array_equal(p, g) for p, g in zip(plain, got))
    assert all(type(call.inputs) is frame.RowSnapshot for call in inst.telemetry.aggregator._queue)
    metrics = inst.flush()
    assert metrics.value(semconv.INPUT_MISSING, ml__feature__name="b") == 1
    spans = [s for s in inst.spans.get_finished_spans() if s.parent is None]  # the pipeline calls, not their steps
    assert len(spans) == 3 and all(s.attributes[semconv.INPUT_FEATURES] == 3 for s in spans)
