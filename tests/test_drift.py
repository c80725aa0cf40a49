"""Drift: each distance against scipy or its direct formula, Evidently's PSI, reports and windows."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, chisquare, ks_2samp, wasserstein_distance

import otel_ml.drift as drift_module
from otel_ml.baseline import Baseline
from otel_ml.config import load
from otel_ml.drift import (
    DriftMonitor,
    chi_square,
    drift_report,
    evidently_binning,
    evidently_psi,
    jensen_shannon,
    ks_binned,
    psi,
    wasserstein_normalised,
)
from otel_ml.frame import as_table


def test_docstring_examples_run():
    assert doctest.testmod(drift_module).failed == 0


@pytest.fixture(scope="module")
def bins():
    rng = np.random.default_rng(42)
    ref = rng.dirichlet(np.ones(8), size=6)
    cur = rng.multinomial(500, rng.dirichlet(np.ones(8)), size=6)
    cur[2, 3] = 0  # an empty current bin
    ref[4, 5] = 0.0  # an empty reference bin
    ref[4] /= ref[4].sum()
    return ref, cur


def test_psi_direct_formula_with_epsilon(bins):
    ref, cur = bins
    got = psi(ref, cur)
    for j in range(ref.shape[0]):
        p = cur[j] / cur[j].sum()
        q = ref[j]
        p = np.maximum(p, 1e-4)
        q = np.maximum(q, 1e-4)
        assert got[j] == pytest.approx(float(np.sum((p - q) * np.log(p / q))), rel=1e-12)


def test_psi_ignores_padding_and_vectorised_equals_one_by_one(bins):
    ref, cur = bins
    padded_ref = np.hstack([ref, np.zeros((6, 3))])
    padded_cur = np.hstack([cur, np.zeros((6, 3), dtype=int)])
    assert np.allclose(psi(padded_ref, padded_cur), psi(ref, cur), rtol=0, atol=1e-15)
    assert np.allclose([psi(ref[j], cur[j]) for j in range(6)], psi(ref, cur), rtol=0, atol=1e-15)


def test_psi_is_zero_for_identical_and_grows_with_shift():
    q = np.full(10, 0.1)
    assert psi(q, np.full(10, 7)) == pytest.approx(0.0, abs=1e-15)
    small = psi(q, np.array([12, 11, 10, 10, 10, 10, 10, 9, 9, 9]))
    big = psi(q, np.array([30, 20, 10, 10, 10, 5, 5, 5, 3, 2]))
    assert 0 < small < 0.05 < 0.1 < big


def test_jensen_shannon_equals_scipy(bins):
    ref, cur = bins
    got_e = jensen_shannon(ref, cur)
    got_2 = jensen_shannon(ref, cur, base=2)
    for j in range(ref.shape[0]):
        assert got_e[j] == pytest.approx(jensenshannon(ref[j], cur[j]), rel=1e-10)
        assert got_2[j] == pytest.approx(jensenshannon(ref[j], cur[j], base=2), rel=1e-10)
    assert jensen_shannon([1, 0], [0, 5], base=2) == pytest.approx(1.0)
    assert jensen_shannon([1, 0], [0, 5]) == pytest.approx(math.sqrt(math.log(2)))


def test_wasserstein_equals_scipy_on_bin_points(bins):
    ref, cur = bins
    rng = np.random.default_rng(1)
    points = np.sort(rng.normal(size=(6, 8)), axis=1)
    std = rng.uniform(0.5, 2.0, size=6)
    got = wasserstein_normalised(ref, cur, points, std)
    for j in range(6):
        expected = wasserstein_distance(points[j], points[j], u_weights=cur[j], v_weights=ref[j]) / std[j]
        assert got[j] == pytest.approx(expected, rel=1e-10)


def test_wasserstein_empty_reference_bin_without_point():
    points = np.array([0.0, np.nan, 2.0, 3.0])
    ref = np.array([0.5, 0.0, 0.25, 0.25])
    cur = np.array([0, 0, 50, 50])
    got = wasserstein_normalised(ref, cur, points, 1.0)
    assert got == pytest.approx(wasserstein_distance([0, 2, 3], [0, 2, 3], [0, 50, 50], [0.5, 0.25, 0.25]))


def test_wasserstein_binned_approximates_raw_evidently_value():
    rng = np.random.default_rng(2)
    ref_raw = rng.normal(size=50_000)
    cur_raw = rng.normal(0.3, 1.0, size=5000)
    b = Baseline(n_bins=20).fit(ref_raw.reshape(-1, 1))
    got = wasserstein_normalised(b.reference_fractions, b.bin_counts(cur_raw.reshape(-1, 1)), b.bin_means, b.stds)
    raw = wasserstein_distance(ref_raw, cur_raw) / ref_raw.std()
    assert got[0] == pytest.approx(raw, rel=0.1)


def test_ks_binned_equals_raw_statistic_on_discrete_data():
    rng = np.random.default_rng(3)
    ref_raw = rng.integers(0, 6, 4000).astype(float)
    cur_raw = rng.integers(1, 7, 1500).astype(float)
    b = Baseline().fit(ref_raw.reshape(-1, 1))
    d, p = ks_binned(b.reference_fractions, b.bin_counts(cur_raw.reshape(-1, 1)), b.reference_counts.sum(axis=1))
    exact = ks_2samp(ref_raw, cur_raw, method="asymp")
    assert d[0] == pytest.approx(exact.statistic, rel=1e-12)
    # scipy's two-sided asymptotic p-value is kstwo.sf(D, round(n*m/(n+m))) as well
    assert p[0] == pytest.approx(exact.pvalue, rel=1e-6, abs=1e-300)


def test_ks_binned_is_a_lower_bound_on_continuous_data():
    rng = np.random.default_rng(4)
    ref_raw = rng.normal(size=10_000)
    cur_raw = rng.normal(0.1, 1.2, size=2000)
    b = Baseline(n_bins=10).fit(ref_raw.reshape(-1, 1))
    d, p = ks_binned(b.reference_fractions, b.bin_counts(cur_raw.reshape(-1, 1)), [10_000])
    exact = ks_2samp(ref_raw, cur_raw)
    assert d[0] <= exact.statistic + 1e-12
    assert d[0] > 0.5 * exact.statistic
    assert p[0] >= exact.pvalue


def test_chi_square_goodness_of_fit_equals_scipy():
    ref = np.array([[0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25]])
    cur = np.array([[40, 40, 20, 0], [10, 20, 30, 40]])
    stat, p = chi_square(ref, cur)
    s0 = chisquare(cur[0, :3], ref[0, :3] * 100)
    s1 = chisquare(cur[1], ref[1] * 100)
    assert stat[0] == pytest.approx(s0.statistic) and p[0] == pytest.approx(s0.pvalue)
    assert stat[1] == pytest.approx(s1.statistic) and p[1] == pytest.approx(s1.pvalue)


def test_chi_square_new_category_uses_epsilon_and_rescales():
    ref = np.array([0.6, 0.4, 0.0])
    cur = np.array([50, 40, 10])
    stat, p = chi_square(ref, cur)
    q = np.array([0.6, 0.4, 1e-4])
    expected = q / q.sum() * 100
    assert stat == pytest.approx(chisquare(cur, expected).statistic)
    assert p < 1e-10


def test_chi_square_two_sample_equals_scipy_contingency():
    ref_counts = np.array([[300, 200, 100, 0, 0], [50, 60, 70, 80, 0]])
    cur = np.array([[40, 40, 20, 5, 0], [10, 20, 30, 40, 0]])
    stat, p = chi_square(ref_counts / ref_counts.sum(axis=1, keepdims=True), cur, ref_counts.sum(axis=1))
    for j in range(2):
        used = (ref_counts[j] + cur[j]) > 0
        res = chi2_contingency(np.vstack([ref_counts[j, used], cur[j, used]]), correction=False)
        assert stat[j] == pytest.approx(res.statistic, rel=1e-10) and p[j] == pytest.approx(res.pvalue, rel=1e-8)


def test_chi_square_two_sample_is_calibrated_when_reference_is_small():
    """Reference and current from one distribution, equal sizes: ~5 % of p-values below 0.05."""
    rng = np.random.default_rng(8)
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    ref = rng.multinomial(2000, probs, size=4000)
    cur = rng.multinomial(2000, probs, size=4000)
    _, p_two = chi_square(ref / 2000, cur, np.full(4000, 2000))
    _, p_gof = chi_square(ref / 2000, cur)
    assert 0.04 < np.mean(p_two < 0.05) < 0.06
    assert np.mean(p_gof < 0.05) > 0.15  # treating the reference as exact over-alerts


# Values computed by Evidently 0.7.23 itself (legacy stattests _psi / _jensenshannon), once, on this data.
EVIDENTLY_PSI_NORMAL = 0.26988170360949315
EVIDENTLY_PSI_CATEGORICAL = 0.9601177462531402
EVIDENTLY_PSI_FEW_VALUES = 2.0654682581056556
EVIDENTLY_JS_NORMAL = 0.18160882561313244


def _evidently_data():
    rng = np.random.default_rng(0)
    r, c = rng.normal(size=5000), rng.normal(0.5, 1, size=5000)
    rc = rng.choice(list("abcde"), p=[0.4, 0.3, 0.2, 0.09, 0.01], size=3000)
    cc = rng.choice(list("abcdf"), p=[0.2, 0.3, 0.2, 0.2, 0.1], size=2000)
    ri, ci = rng.integers(0, 5, size=3000).astype(float), rng.integers(0, 7, size=2000).astype(float)
    return r, c, rc, cc, ri, ci


def test_psi_equals_evidently_on_evidently_binning():
    r, c, rc, cc, ri, ci = _evidently_data()
    assert evidently_psi(r, c) == pytest.approx(EVIDENTLY_PSI_NORMAL, rel=1e-12)
    assert evidently_psi(rc, cc, categorical=True) == pytest.approx(EVIDENTLY_PSI_CATEGORICAL, rel=1e-12)
    assert evidently_psi(ri, ci) == pytest.approx(EVIDENTLY_PSI_FEW_VALUES, rel=1e-12)
    # our psi() (empty bins -> 1e-4) on Evidently's bins gives Evidently's number: same formula, same epsilon
    rp, cp = evidently_binning(r, c, fill_zeroes=False)
    assert (rp == 0).any() or (cp == 0).any()  # the epsilon matters here
    assert float(psi(rp, np.round(cp * 5000))) == pytest.approx(EVIDENTLY_PSI_NORMAL, rel=1e-12)
    assert float(jensen_shannon(rp, cp * 5000)) == pytest.approx(EVIDENTLY_JS_NORMAL, rel=1e-12)


def test_evidently_binning_is_sturges_over_combined():
    r, c, *_ = _evidently_data()
    rp, cp = evidently_binning(r, c, fill_zeroes=False)
    n_bins = int(np.ceil(np.log2(10_000)) + 1)
    assert rp.size == cp.size == n_bins
    edges = np.linspace(min(r.min(), c.min()), max(r.max(), c.max()), n_bins + 1)
    assert np.allclose(rp, np.histogram(r, edges)[0] / 5000)


def test_evidently_cross_check_when_installed():
    legacy = pytest.importorskip("evidently.legacy.calculations.stattests.psi")
    from evidently.legacy.core import ColumnType

    r, c, *_ = _evidently_data()
    value = legacy._psi(pd.Series(r), pd.Series(c), ColumnType.Numerical, 0.1)[0]
    assert evidently_psi(r, c) == pytest.approx(value, rel=1e-12)


# ----------------------------------------------------------------------------------------------------
def _shifted(seed=0, n_ref=20_000, n_cur=5000):
    rng = np.random.default_rng(seed)
    ref = pd.DataFrame({"a": rng.normal(size=n_ref), "b": rng.normal(size=n_ref),
                        "c": rng.choice(["x", "y", "z"], n_ref, p=[0.5, 0.3, 0.2])})
    cur = pd.DataFrame({"a": rng.normal(size=n_cur), "b": rng.normal(1.0, 1.0, size=n_cur),
                        "c": rng.choice(["x", "y", "z", "new"], n_cur, p=[0.2, 0.3, 0.2, 0.3])})
    return ref, cur


def test_drift_report_flags_shifted_features_only():
    ref, cur = _shifted()
    p = np.random.default_rng(0).random(len(ref))
    b = Baseline().fit(ref, scores=p)
    report = drift_report(b, b.bin_counts(as_table(cur)), b.score_bin_counts(np.full(len(cur), 0.9)), len(cur))
    assert report.drifted_features == ["b", "c"]
    assert report.drift_share == pytest.approx(2 / 3)
    assert report.dataset_drift
    assert report.scores["psi"][0] < 0.01 < 0.1 < report.scores["psi"][1]
    assert np.isnan(report.scores["wasserstein"][2]) and np.isnan(report.scores["ks"][2])
    assert np.isnan(report.p_values["chi_square"][0]) and report.p_values["chi_square"][2] < 1e-10
    # moved one std; binned W puts mass beyond the last edge at that bin's reference mean: a little low
    assert 0.8 < report.scores["wasserstein"][1] < 1.0
    assert report.prediction_drift and report.prediction_scores["psi"] > 1
    rows = report.rows()
    assert [r["feature"] for r in rows] == ["a", "b", "c"] and rows[1]["drifted"]
    assert ("b", "psi", float(report.scores["psi"][1])) in report.gauges()
    assert report.to_dict()["drifted_features"] == ["b", "c"]


def test_pvalues_are_not_alerted_on_by_default():
    rng = np.random.default_rng(9)
    ref = rng.normal(size=(200_000, 1))
    cur = rng.normal(0.03, 1.0, size=(100_000, 1))  # tiny but "significant" shift
    b = Baseline().fit(ref)
    counts = b.bin_counts(cur)
    report = drift_report(b, counts)
    assert report.p_value[0] < 0.001 and report.scores["psi"][0] < 0.01
    assert not report.drifted[0]
    strict = DriftMonitor(b, drift_alert_on_pvalue=True, window_rows=10)
    assert strict.add(counts, n_rows=100_000).drifted[0]


def test_monitor_windows_by_rows_and_time_with_min_rows():
    ref, cur = _shifted()
    b = Baseline().fit(ref)
    m = DriftMonitor(b, window_rows=1000, window_seconds=10.0, min_rows=100)
    t = as_table(cur.iloc[:600])
    assert m.add(b.bin_counts(t), n_rows=600, now=0.0) is None
    r = m.add(b.bin_counts(t), n_rows=600, now=1.0)
    assert r is not None and r.closed_by == "rows" and r.n_rows == 1200 and r.counts[0] == 1200
    assert m.rows_in_window == 0
    small = as_table(cur.iloc[:50])
    assert m.add(b.bin_counts(small), n_rows=50, now=2.0) is None
    assert m.tick(now=20.0) is None  # due by time but below min_rows: stays open
    r = m.add(b.bin_counts(small), n_rows=50, now=21.0)
    assert r is not None and r.closed_by == "time" and r.n_rows == 100
    assert (r.window_start, r.window_end) == (2.0, 21.0)
    assert r.baseline_id == b.baseline_id
    assert m.add(b.bin_counts(small), n_rows=50, now=22.0) is None
    r = m.flush(now=23.0)
    assert r.closed_by == "manual" and r.n_rows == 50
    assert m.flush(now=24.0) is None
    assert m.windows_closed == 3


def test_monitor_window_counts_equal_one_big_batch():
    ref, cur = _shifted()
    b = Baseline().fit(ref)
    m = DriftMonitor(b, window_rows=len(cur), window_seconds=1e9)
    report = None
    for i in range(0, len(cur), 7):
        part = cur.iloc[i:i + 7]
        report = m.add(b.bin_counts(as_table(part)), n_rows=len(part), now=float(i)) or report
    whole = drift_report(b, b.bin_counts(as_table(cur)))
    assert np.allclose(report.scores["psi"], whole.scores["psi"], rtol=0, atol=1e-15)


def test_monitor_from_config_and_memory_is_fixed():
    b = Baseline().fit(np.random.default_rng(0).normal(size=(500, 4)))
    cfg = load({"OTEL_ML_DRIFT_WINDOW_ROWS": "50", "OTEL_ML_DRIFT_THRESHOLD_PSI": "0.2"})
    m = DriftMonitor.from_config(b, cfg)
    assert m.window_rows == 50 and m.thresholds.drift_threshold_psi == 0.2
    for _ in range(30):
        m.add(b.bin_counts(np.zeros((3, 4))), n_rows=3, now=0.0)
    assert m._counts.shape == b.reference_fractions.shape  # whatever the traffic
    assert m.windows_closed == 1 and m.rows_in_window == 90 - 51


def test_monitor_rejects_unknown_alert_method():
    b = Baseline().fit(np.zeros((10, 1)))
    with pytest.raises(ValueError, match="alerting methods"):
        DriftMonitor(b, methods=("ks",))


def test_no_values_gives_nan_and_no_drift():
    b = Baseline().fit(np.random.default_rng(0).normal(size=(100, 2)))
    counts = b.bin_counts(np.array([[np.nan, 1.0]]))
    r = drift_report(b, counts)
    assert np.isnan(r.scores["psi"][0]) and not r.drifted[0]
    assert r.counts.tolist() == [0, 1]


def test_fleet_psi_from_summed_replica_counts_equals_psi_of_the_union():
    """Three replicas fed different data: PSI of their summed bin counters, computed the way the PromQL
    rule in docs/drift.md does it (fractions, clamp_min, ln), equals PSI of the union of their inputs."""
    rng = np.random.default_rng(12)
    b = Baseline().fit(pd.DataFrame({"x": rng.normal(size=5000), "c": rng.choice(["a", "b", "c"], 5000)}))
    replicas = [
        pd.DataFrame({"x": rng.normal(0.0, 1, 700), "c": rng.choice(["a", "b"], 700)}),
        pd.DataFrame({"x": rng.normal(0.8, 1, 300), "c": rng.choice(["a", "b", "c", "new"], 300)}),
        pd.DataFrame({"x": rng.normal(-0.3, 2, 1100), "c": rng.choice(["c"], 1100)}),
    ]
    counters = sum(b.bin_counts(as_table(r)) for r in replicas)
    union = drift_report(b, b.bin_counts(as_table(pd.concat(replicas))))
    fractions = b.reference_fractions
    for j in range(2):
        k = b.n_bins_per_feature[j]  # exported bins: no padding
        p = counters[j, :k] / counters[j, :k].sum()
        q = fractions[j, :k]
        promql = np.sum((np.maximum(p, 1e-4) - np.maximum(q, 1e-4)) * np.log(np.maximum(p, 1e-4) / np.maximum(q, 1e-4)))
        assert promql == pytest.approx(union.scores["psi"][j], abs=1e-12)
        assert union.scores["psi"][j] > 0.1
