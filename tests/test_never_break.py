"""Instrumentation never changes a result nor an exception: instrumented calls against plain calls.

Each case runs the same method on the same fitted model twice, first uninstrumented, then
instrumented, and compares return values exactly (or exception type and message).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from otel_ml import semconv

RNG = np.random.default_rng(42)
X_TRAIN = RNG.normal(size=(300, 4))
Y_CLASS = (X_TRAIN[:, 0] + X_TRAIN[:, 1] > 0).astype(int)
Y_REG = X_TRAIN @ np.array([1.0, -2.0, 0.5, 3.0])


def _models():
    return {
        "logistic": (LogisticRegression().fit(X_TRAIN, Y_CLASS), ["predict", "predict_proba",
                                                                   "predict_log_proba", "decision_function"]),
        "forest": (RandomForestClassifier(n_estimators=5, random_state=0).fit(X_TRAIN, Y_CLASS),
                   ["predict", "predict_proba"]),
        "hgb": (HistGradientBoostingClassifier(max_iter=5).fit(X_TRAIN, Y_CLASS), ["predict", "predict_proba"]),
        "svc": (SVC().fit(X_TRAIN, Y_CLASS), ["predict", "decision_function"]),
        "knn": (KNeighborsClassifier().fit(X_TRAIN, Y_CLASS), ["predict"]),
        "linear": (LinearRegression().fit(X_TRAIN, Y_REG), ["predict"]),
        "kmeans": (KMeans(n_clusters=3, n_init=1, random_state=0).fit(X_TRAIN), ["predict", "transform"]),
        "scaler": (StandardScaler().fit(X_TRAIN), ["transform"]),
        "pipeline": (make_pipeline(StandardScaler(), LogisticRegression()).fit(X_TRAIN, Y_CLASS),
                     ["predict", "predict_proba"]),
    }


def _inputs():
    nan = X_TRAIN[:10].copy()
    nan[3, 2] = np.nan
    inf = X_TRAIN[:10].copy()
    inf[0, 0] = np.inf
    strings = X_TRAIN[:5].astype(object)
    strings[1, 1] = "abc"
    return {
        "normal": X_TRAIN[:20],
        "one_row": X_TRAIN[:1],
        "nan": nan,
        "inf": inf,
        "empty": np.empty((0, 4)),
        "wrong_shape": X_TRAIN[:5, :3],
        "one_dimensional": X_TRAIN[0],
        "three_dimensional": X_TRAIN[:8].reshape(2, 4, 4),
        "sparse": sp.csr_matrix(X_TRAIN[:10]),
        "object_numbers": X_TRAIN[:5].astype(object),
        "strings": strings,
        "dataframe": pd.DataFrame(X_TRAIN[:10], columns=["a", "b", "c", "d"]),
        "list": X_TRAIN[:3].tolist(),
        "large": RNG.normal(size=(50_000, 4)),
        "none": None,
    }


def _run(model, method, X):
    try:
        return ("ok", getattr(model, method)(X))
    except Exception as exc:  # the exception is part of the behaviour under test
        return ("raised", type(exc), str(exc))


def _same(a, b) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "raised":
        return a[1:] == b[1:]
    x, y = a[1], b[1]
    if sp.issparse(x):
        return (x != y).nnz == 0
    return np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)


def test_results_and_exceptions_are_unchanged(make):
    models, inputs = _models(), _inputs()
    plain = {(m, meth, i): _run(model, meth, X) for m, (model, methods) in models.items()
             for meth in methods for i, X in inputs.items()}
    inst = make()
    mismatches = []
    raised = 0
    for (m, meth, i), expected in plain.items():
        got = _run(models[m][0], meth, inputs[i])
        raised += expected[0] == "raised"
        if not _same(expected, got):
            mismatches.append((m, meth, i, expected[:2], got[:2]))
    assert not mismatches
    assert raised > 20  # the bad inputs really do reach the models' own errors
    metrics = inst.flush()
    assert metrics.value(semconv.INSTRUMENTATION_ERRORS) == 0
    assert len(inst.roots()) == len(plain)


def test_pandas_categoricals_and_strings_through_a_pipeline(make):
    frame = pd.DataFrame({
        "income": RNG.normal(50, 10, size=200),
        "purpose": pd.Categorical(RNG.choice(["car", "house", "education"], size=200)),
        "housing": RNG.choice(["own", "rent"], size=200).astype(object),
    })
    y = (frame["income"] > 50).astype(int)
    pre = ColumnTransformer([("num", StandardScaler(), ["income"]),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), ["purpose", "housing"])])
    model = make_pipeline(pre, LogisticRegression()).fit(frame, y)
    batch = frame.iloc[:30].copy()
    batch.loc[batch.index[0], "housing"] = None
    expected = model.predict_proba(batch)
    inst = make()
    assert np.array_equal(model.predict_proba(batch), expected)
    metrics = inst.flush()
    assert metrics.value(semconv.INSTRUMENTATION_ERRORS) == 0
    assert metrics.value(semconv.INPUT_MISSING, ml__feature__name="housing") == 1
    root = inst.roots()[0]
    assert list(root.attributes[semconv.INPUT_FEATURE_NAMES]) == ["income"]  # numeric features summarised


@pytest.mark.parametrize("bad", ["not an array", 42, {"a": 1}])
def test_nonsense_inputs_raise_what_sklearn_raises(make, bad):
    model = LogisticRegression().fit(X_TRAIN, Y_CLASS)
    expected = _run(model, "predict", bad)
    make()
    assert _same(expected, _run(model, "predict", bad))


def test_bound_methods_still_go_to_worker_processes(make):
    """``model.predict`` handed to joblib's processes or pickled by hand (multiprocessing does) works as it
    does without otel-ml: wrapt's bound proxies refuse pickling, ours pickle as the plain method."""
    import pickle

    import joblib

    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(400, 5)), rng.integers(0, 2, 400)
    model = LogisticRegression().fit(X, y)
    expected = model.predict_proba(X)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)  # an available_if method
    expected_pipeline = pipeline.predict_proba(X)
    make()
    assert np.array_equal(pickle.loads(pickle.dumps(model.predict_proba))(X), expected)
    assert np.array_equal(pickle.loads(pickle.dumps(pipeline.predict_proba))(X), expected_pipeline)
    chunks = np.array_split(X, 4)
    parts = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(model.predict_proba)(c) for c in chunks)
    assert np.array_equal(np.vstack(parts), expected)


def test_patched_methods_look_and_answer_as_before(make):
    """Names, docstrings and signatures are the originals' (scikit-learn inspects ``fit``'s parameters),
    and a method that exists only when the model supports it (``available_if``) still does not exist."""
    import inspect

    before = {name: (getattr(LogisticRegression, name).__doc__, inspect.signature(getattr(LogisticRegression, name)))
              for name in ("fit", "predict", "predict_proba", "score")}
    model = LogisticRegression().fit(X_TRAIN, Y_CLASS)
    wrong_calls = [lambda: model.predict(), lambda: model.predict(X_TRAIN, X=X_TRAIN),
                   lambda: model.predict(X_TRAIN, 3), lambda: model.predict(Z=X_TRAIN)]
    def raised(call):
        with pytest.raises(TypeError) as error:
            call()
        return str(error.value)

    messages = [raised(call) for call in wrong_calls]
    make()
    assert [raised(call) for call in wrong_calls] == messages
    assert np.array_equal(model.predict(X=X_TRAIN), model.predict(X_TRAIN))
    for name, (doc, signature) in before.items():
        method = getattr(LogisticRegression(), name)
        assert (method.__name__, method.__doc__, inspect.signature(getattr(LogisticRegression, name))) == (
            name, doc, signature)
    assert not hasattr(make_pipeline(StandardScaler(), LinearRegression()), "predict_proba")
    assert not hasattr(SVC(probability=False), "predict_proba")
    assert hasattr(make_pipeline(StandardScaler(), LogisticRegression()), "predict_proba")


def test_a_failing_span_writer_loses_no_count(make):
    """The aggregator thread's span writing fails (a broken tracer): the call is unaffected, its counts
    arrive, and the failure is counted once under ml.instrumentation.errors."""
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(50, 3)), rng.integers(0, 2, 50)
    model = LogisticRegression().fit(X, y)
    expected = model.predict_proba(X[:5])
    inst = make()
    inst.telemetry._ensure_started()

    class BrokenTracer:
        def start_span(self, *args, **kwargs):
            raise RuntimeError("exporter misconfigured")

    inst.telemetry._background = (BrokenTracer(), inst.telemetry._background[1])
    assert np.array_equal(model.predict_proba(X[:5]), expected)
    metrics = inst.flush()
    assert metrics.value(semconv.INPUT_ROWS_METRIC) == 5
    assert metrics.value(semconv.INSTRUMENTATION_ERRORS, ml__instrumentation__location="span") == 1
    assert inst.finished() == []
