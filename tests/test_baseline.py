"""Baseline: fit statistics, bins, merge, JSON round trip, discovery, serving-time counts."""

from __future__ import annotations

import doctest
import json
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import otel_ml.baseline as baseline_module
from otel_ml.baseline import OTHER, Baseline, BaselineMergeError, find_baseline, reduce_scores
from otel_ml.frame import as_table
from otel_ml.semconv import SCORE_BUCKETS


def test_docstring_examples_run():
    assert doctest.testmod(baseline_module).failed == 0


@pytest.fixture(scope="module")
def mixed():
    rng = np.random.default_rng(7)
    n = 5000
    df = pd.DataFrame({
        "income": rng.lognormal(10, 1, n),
        "age": rng.integers(18, 90, n).astype(float),
        "flag": rng.random(n) < 0.3,
        "city": pd.Categorical(rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1])),
    })
    df.loc[::10, "income"] = np.nan
    return df


def test_numeric_statistics_equal_numpy(mixed):
    b = Baseline().fit(mixed)
    f = b.features[0]
    x = mixed["income"].to_numpy()
    ok = x[~np.isnan(x)]
    assert f["kind"] == "numeric"
    assert f["count"] == ok.size and f["missing"] == 500
    assert f["mean"] == pytest.approx(ok.mean(), rel=1e-12)
    assert f["std"] == pytest.approx(ok.std(), rel=1e-10)
    assert (f["min"], f["max"]) == (ok.min(), ok.max())
    assert sum(f["bin_counts"]) == ok.size


def test_quantile_bins_hold_tenths_and_are_right_closed(mixed):
    b = Baseline(n_bins=10).fit(mixed)
    f = b.features[0]
    ok = mixed["income"].dropna().to_numpy()
    assert len(f["edges"]) == 9
    # the counts are exactly what right-closed bins on these edges give
    expected = np.bincount(np.searchsorted(f["edges"], ok, side="left"), minlength=10)
    assert f["bin_counts"] == expected.tolist()
    assert np.allclose(np.array(f["bin_counts"]) / ok.size, 0.1, atol=0.002)


def test_discrete_feature_gets_one_bin_per_value():
    x = np.repeat([1.0, 2.0, 3.0], [50, 30, 20]).reshape(-1, 1)
    b = Baseline(n_bins=10).fit(x)
    assert b.features[0]["edges"] == [1.0, 2.0, 3.0]
    assert b.features[0]["bin_counts"] == [50, 30, 20, 0]
    assert b.features[0]["bin_means"][:3] == [1.0, 2.0, 3.0]


def test_boolean_and_categorical(mixed):
    b = Baseline(top_k=2).fit(mixed)
    flag, city = b.features[2], b.features[3]
    assert flag["kind"] == "boolean" and flag["edges"] == [0.0]
    assert flag["bin_counts"] == [int((~mixed["flag"]).sum()), int(mixed["flag"].sum())]
    assert city["kind"] == "categorical"
    counts = mixed["city"].value_counts()
    assert city["categories"] == ["a", "b", "c", "d"]
    assert city["category_counts"] == [int(counts[c]) for c in "abcd"]
    assert city["bin_counts"] == [int(counts["a"]), int(counts["b"]), int(counts["c"] + counts["d"])]
    assert b.bin_labels("city") == ["a", "b", OTHER]
    assert b.bin_labels("flag") == ["(-inf, 0]", "(0, +inf)"]


def test_bin_counts_match_reference_on_reference_data(mixed):
    b = Baseline(top_k=3).fit(mixed)
    counts = b.bin_counts(as_table(mixed))
    assert counts.dtype == np.int64 and counts.shape == b.reference_fractions.shape
    assert np.array_equal(counts, b.reference_counts)
    fr = b.reference_fractions
    assert np.allclose(fr.sum(axis=1), 1.0)


def test_bin_counts_single_row_unseen_category_and_missing(mixed):
    b = Baseline(top_k=3).fit(mixed)
    row = pd.DataFrame({"income": [np.nan], "age": [200.0], "flag": [True],
                        "city": pd.Categorical(["zz"])})
    counts = b.bin_counts(as_table(row))
    assert counts[0].sum() == 0  # missing not binned
    assert counts[1, len(b.features[1]["edges"])] == 1  # beyond the last edge: last bin
    assert counts[2, 1] == 1
    assert counts[3, 3] == 1  # unseen -> other bin (index top_k)
    assert counts.sum() == 3


def test_bin_counts_by_position_and_by_name(mixed):
    num = mixed[["income", "age"]]
    b = Baseline().fit(num)
    arr = num.to_numpy()
    assert np.array_equal(b.bin_counts(as_table(arr)), b.reference_counts)  # plain array: by position
    swapped = num[["age", "income"]]
    assert np.array_equal(b.bin_counts(as_table(swapped)), b.reference_counts)  # by name
    only_age = num[["age"]]
    counts = b.bin_counts(as_table(only_age))
    assert counts[0].sum() == 0 and counts[1].sum() == len(num)


def test_large_batch_path_equals_small_batch_path():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 5))
    X[::7, 2] = np.nan
    X[5, 1] = np.inf
    b = Baseline().fit(rng.normal(size=(2000, 5)))
    big = b.bin_counts(as_table(X))
    small = sum(b.bin_counts(as_table(X[i:i + 1])) for i in range(0, 3000, 1))
    assert np.array_equal(big, small)
    assert big[2].sum() == 3000 - len(range(0, 3000, 7)) and big[1].sum() == 2999


def test_score_bins_use_semconv_edges_and_right_closed():
    rng = np.random.default_rng(0)
    p = rng.random(1000)
    b = Baseline().fit(rng.normal(size=(1000, 2)), scores=np.column_stack([1 - p, p]))
    pred = b.prediction
    assert pred["score_kind"] == "probability" and pred["score_source"] == "positive_class"
    assert pred["score_edges"] == list(SCORE_BUCKETS) and len(pred["score_counts"]) == 20
    assert pred["score_counts"] == np.bincount(np.searchsorted(SCORE_BUCKETS, p, side="left"),
                                               minlength=20).tolist()
    assert b.score_bin_counts(np.array([0.05, 0.0500001, 1.0, np.nan])).tolist() == [1, 1] + [0] * 17 + [1]


def test_regression_scores_get_quantile_bins():
    rng = np.random.default_rng(0)
    y = rng.normal(100, 10, 2000)
    b = Baseline().fit(rng.normal(size=(2000, 1)), scores=y)
    assert b.prediction["score_kind"] == "value"
    assert sum(b.prediction["score_counts"]) == 2000
    assert max(b.prediction["score_counts"]) < 0.1 * 2000


def test_reduce_scores_multiclass_takes_max():
    s, how = reduce_scores(np.array([[0.2, 0.5, 0.3], [0.7, 0.1, 0.2]]))
    assert how == "max" and s.tolist() == [0.5, 0.7]


def test_calibration_and_expected_accuracy():
    rng = np.random.default_rng(5)
    n = 20000
    p = rng.random(n)
    y = (rng.random(n) < p).astype(int)  # perfectly calibrated scores
    b = Baseline().fit(rng.normal(size=(n, 1)), y=y, scores=p)
    cal = b.calibration
    assert cal["kind"] == "binary" and cal["positive_label"] == 1
    assert sum(cal["rows"]) == n and sum(cal["hits"]) == int(y.sum())
    true_acc = float(((p > 0.5) == y).mean())
    assert b.expected_accuracy(b.prediction["score_counts"]) == pytest.approx(true_acc, abs=1e-9)
    # a window of confident scores is expected to be more accurate than one near 0.5
    confident = b.score_bin_counts(np.r_[np.full(100, 0.02), np.full(100, 0.98)])
    unsure = b.score_bin_counts(np.full(200, 0.52))
    assert b.expected_accuracy(confident) > 0.9 > 0.6 > b.expected_accuracy(unsure)
    assert b.target == {"classes": [0, 1], "class_counts": [int((y == 0).sum()), int(y.sum())]}


def test_json_round_trip_and_stable_id(tmp_path, mixed):
    b = Baseline(top_k=3).fit(mixed, scores=np.linspace(0, 1, len(mixed)))
    path = b.save(tmp_path / "m.baseline.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "otel-ml/baseline" and doc["version"] == 1
    assert doc["baseline_id"] == b.baseline_id and len(b.baseline_id) == 16
    loaded = Baseline.load(path)
    assert loaded.baseline_id == b.baseline_id
    assert np.array_equal(loaded.reference_fractions, b.reference_fractions)
    assert np.array_equal(loaded.bin_counts(as_table(mixed)), b.bin_counts(as_table(mixed)))
    assert Baseline(top_k=3).fit(mixed, scores=np.linspace(0, 1, len(mixed))).baseline_id == b.baseline_id
    assert Baseline(top_k=2).fit(mixed).baseline_id != b.baseline_id


def test_from_dict_rejects_other_documents():
    with pytest.raises(ValueError, match="not an otel-ml baseline"):
        Baseline.from_dict({"format": "x"})
    with pytest.raises(ValueError, match="version 2"):
        Baseline.from_dict({"format": "otel-ml/baseline", "version": 2})


def test_merge_halves_equals_whole(mixed):
    whole = Baseline(top_k=3).fit(mixed, scores=np.linspace(0, 1, len(mixed)))
    half = len(mixed) // 2
    a = Baseline(top_k=3, edges=whole).fit(mixed.iloc[:half], scores=np.linspace(0, 1, len(mixed))[:half])
    b = Baseline(top_k=3, edges=whole).fit(mixed.iloc[half:], scores=np.linspace(0, 1, len(mixed))[half:])
    merged = a + b
    assert merged.n_rows == whole.n_rows
    for fm, fw in zip(merged.features, whole.features):
        for key in ("count", "missing", "min", "max", "bin_counts"):
            assert fm.get(key) == fw.get(key), (fm["name"], key)
        if fw.get("mean") is not None:
            assert fm["mean"] == pytest.approx(fw["mean"], rel=1e-12)
            assert fm["std"] == pytest.approx(fw["std"], rel=1e-12)
        if fw["kind"] == "categorical":
            assert fm["categories"] == fw["categories"] and fm["category_counts"] == fw["category_counts"]
    assert merged.prediction["score_counts"] == whole.prediction["score_counts"]
    assert np.array_equal(merged.reference_fractions, whole.reference_fractions)
    assert Baseline.merge([a, b]).to_dict()["features"] == merged.to_dict()["features"]


def test_merge_three_parts_and_many_small_parts_moments_exact():
    rng = np.random.default_rng(11)
    x = rng.normal(1e6, 3.0, size=(999, 1))  # large offset: naive sum of squares would lose digits
    whole = Baseline().fit(x)
    parts = [Baseline(edges=whole).fit(x[i:i + 111]) for i in range(0, 999, 111)]
    merged = Baseline.merge(parts)
    assert merged.features[0]["mean"] == pytest.approx(x.mean(), rel=1e-14)
    assert merged.features[0]["std"] == pytest.approx(x.std(), rel=1e-9)
    assert merged.features[0]["bin_counts"] == whole.features[0]["bin_counts"]


def test_merge_with_different_edges_raises():
    rng = np.random.default_rng(0)
    a = Baseline().fit(rng.normal(size=(100, 1)))
    b = Baseline().fit(rng.normal(size=(100, 1)))
    with pytest.raises(BaselineMergeError, match="edges differ"):
        a + b


def test_find_baseline_next_to_model_and_override(tmp_path):
    b = Baseline().fit(np.arange(20.0).reshape(-1, 2))
    model = tmp_path / "model.pkl"
    model.write_bytes(b"")
    assert find_baseline(model) is None
    b.save(tmp_path / "model.baseline.json")
    assert find_baseline(model).baseline_id == b.baseline_id
    other = tmp_path / "elsewhere.json"
    Baseline(n_bins=2).fit(np.arange(20.0).reshape(-1, 2)).save(other)
    assert find_baseline(model, override=other).n_bins == 2
    with pytest.raises(FileNotFoundError):
        find_baseline(model, override=tmp_path / "missing.json")


class _Model:  # a stand-in for a fitted estimator
    pass


def test_model_attribute_pickles_without_otel_ml(tmp_path):
    b = Baseline().fit(np.arange(20.0).reshape(-1, 2))
    model = _Model()
    model.__dict__["_otel_ml_baseline"] = b.to_model_attribute()
    assert Baseline.from_model_attribute(model).baseline_id == b.baseline_id
    assert Baseline.from_model_attribute(_Model()) is None
    # the attribute is plain data: a pickle of it loads in a Python that blocks every otel_ml import
    path = tmp_path / "attr.pkl"
    path.write_bytes(pickle.dumps(b.to_model_attribute()))
    code = ("import sys, pickle\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'otel_ml': raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            f"d = pickle.load(open({str(path)!r}, 'rb'))\n"
            "print(d['format'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "otel-ml/baseline"


def test_fitted_sklearn_model_carrying_a_baseline_unpickles_without_otel_ml(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    b = Baseline().fit(X, y=y, scores=model.predict_proba(X))
    setattr(model, baseline_module.MODEL_ATTRIBUTE, b.to_model_attribute())
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    code = ("import sys, pickle\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'otel_ml': raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            f"m = pickle.load(open({str(path)!r}, 'rb'))\n"
            "print(m._otel_ml_baseline['baseline_id'], m.predict([[1.0, 0.0, 0.0]])[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [b.baseline_id, "1"]
    assert Baseline.from_model_attribute(pickle.loads(path.read_bytes())).baseline_id == b.baseline_id


def test_fit_returns_self_and_records_names():
    b = Baseline()
    assert b.fit(np.zeros((3, 2)), feature_names=["p", "q"]) is b
    assert b.feature_names_in_ == ["p", "q"]


def test_all_missing_feature_and_empty_categories():
    X = np.array([[np.nan, 1.0], [np.nan, 2.0]])
    b = Baseline().fit(X)
    f = b.features[0]
    assert f["count"] == 0 and f["missing"] == 2 and f["mean"] is None and f["edges"] == []
    assert b.reference_fractions[0].sum() == 0
    json.loads(b.to_json())  # still valid JSON (no NaN)


def test_uniform_binning():
    b = Baseline(n_bins=4, binning="uniform").fit(np.linspace(0, 8, 81).reshape(-1, 1))
    assert b.features[0]["edges"] == [2.0, 4.0, 6.0]
