"""Drift of binned distributions: distances and tests on (reference fractions, current counts), and a windowed
monitor that turns a stream of bin counts into drift reports.

Usage::

    from otel_ml.drift import DriftMonitor
    monitor = DriftMonitor(baseline, window_rows=1000, window_seconds=300)
    report = monitor.add(baseline.bin_counts(table), baseline.score_bin_counts(scores), n_rows=len(table))
    if report is not None and report.dataset_drift: ...

Every function takes ``reference`` fractions and ``current`` counts of the same shape, ``(n_bins,)`` for one
feature or ``(n_features, n_bins)`` for many, and returns one value per feature, computed for all features in
one numpy expression. Zero-padded bins (both sides zero, as in :meth:`Baseline.bin_counts
<otel_ml.baseline.Baseline.bin_counts>`) change nothing. A feature with no current values gives NaN.

==================  ==============================================================  =========  =========
method              formula on bin fractions p (current), q (reference)             range      alert at
==================  ==============================================================  =========  =========
``psi``             sum (p - q) ln(p / q), fractions below ``eps`` = 1e-4 raised     [0, inf)   > 0.1
``jensen_shannon``  sqrt(JS divergence), natural log (base 2 on request)             [0, 0.83]  > 0.1
``wasserstein``     W1 between the bins placed at their reference means, divided     [0, inf)   > 0.1
                    by the reference std (Evidently's normalisation); numeric only
``ks``              max abs(F_p - F_q) over bin edges; p-value from ``kstwo``        [0, 1]     p < 0.05*
``chi_square``      two-sample (homogeneity) chi-square on reference and current     [0, inf)   p < 0.05*
                    counts; categoricals and booleans
==================  ==============================================================  =========  =========

\\* p-values are reported, and alerted on only with ``drift_alert_on_pvalue=True``: at production sample sizes
almost every feature is "significant" while its distance stays negligible. Thresholds default to Evidently's
(PSI 0.1, Jensen-Shannon 0.1, normalised Wasserstein 0.1, p-value 0.05); the natural-log Jensen-Shannon
distance is the one Evidently thresholds at 0.1 (``scipy.spatial.distance.jensenshannon`` default).

>>> import numpy as np
>>> q = np.array([0.25, 0.25, 0.25, 0.25])
>>> round(float(psi(q, np.array([25, 25, 25, 25]))), 12)
0.0
>>> round(float(psi(q, np.array([40, 30, 20, 10]))), 4)
0.2282
>>> round(float(jensen_shannon(q, np.array([40, 30, 20, 10]))), 4)
0.1669
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from otel_ml.frame import KIND_BOOLEAN, KIND_CATEGORICAL, KIND_NUMERIC

EPS = 1e-4  # fraction given to an empty bin in PSI (Evidently's 0.0001)

PSI = "psi"
JENSEN_SHANNON = "jensen_shannon"
WASSERSTEIN = "wasserstein"
KS = "ks"
CHI_SQUARE = "chi_square"
DISTANCE_METHODS = (PSI, JENSEN_SHANNON, WASSERSTEIN)
METHODS = (PSI, JENSEN_SHANNON, WASSERSTEIN, KS, CHI_SQUARE)


# ----------------------------------------------------------------------------------------------------
# distances and tests, vectorised over features (last axis = bins)
# ----------------------------------------------------------------------------------------------------
def _fractions(counts: Any) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(counts, dtype=np.float64)
    n = c.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return c / n, n[..., 0]


def _normalise(reference: Any) -> np.ndarray:
    q = np.asarray(reference, dtype=np.float64)
    total = q.sum(axis=-1, keepdims=True)
    return np.divide(q, total, out=np.zeros_like(q), where=total > 0)


def psi(reference: Any, current: Any, eps: float = EPS) -> np.ndarray:
    """Population Stability Index: ``sum((p - q) * ln(p / q))`` over bins, natural log.

    ``p`` are the current counts as fractions, ``q`` the reference fractions; a fraction below ``eps`` is
    raised to ``eps`` first, so a bin that empties or appears weighs ``|p - q| * ln(|p - q| / eps)``
    instead of infinity, and bins empty on both sides add nothing. Evidently replaces only empty bins by
    0.0001: the two agree whenever every non-empty bin holds at least 1/10,000 of its sample (always for
    samples under 10,000 values). A clamp is what PromQL's ``clamp_min`` computes, so the fleet-wide
    recording rule (``docs/drift.md``) gives this function's value on the summed counts.
    """
    p, _ = _fractions(current)
    q = _normalise(reference)
    p = np.maximum(p, eps)
    q = np.maximum(q, eps)
    return ((p - q) * np.log(p / q)).sum(axis=-1)


def _entropy_terms(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(a > 0, a * np.log(a / np.where(m > 0, m, 1.0)), 0.0)


def jensen_shannon(reference: Any, current: Any, base: float = math.e) -> np.ndarray:
    """Jensen-Shannon *distance* (square root of the divergence) between the binned distributions.

    ``base=e`` (default, as ``scipy.spatial.distance.jensenshannon`` and Evidently) bounds it by
    ``sqrt(ln 2) = 0.833``; ``base=2`` bounds it by 1. Empty bins need no epsilon (0 ln 0 = 0).
    """
    p, _ = _fractions(current)
    q = _normalise(reference)
    m = (p + q) / 2
    div = (_entropy_terms(p, m).sum(axis=-1) + _entropy_terms(q, m).sum(axis=-1)) / 2
    return np.sqrt(np.maximum(div, 0.0) / math.log(base))


def wasserstein_normalised(reference: Any, current: Any, points: Any, std: Any) -> np.ndarray:
    """First Wasserstein distance between the binned distributions, divided by the reference std.

    Each bin's mass sits at ``points`` (the reference mean of the values in the bin, kept in the baseline);
    then ``W1 = sum_i |F_p(i) - F_q(i)| * (x_(i+1) - x_i)``, which is
    ``scipy.stats.wasserstein_distance(points, points, p, q)``. Dividing by ``max(std, 0.001)`` is
    Evidently's normalisation (``wasserstein_distance(ref, cur) / std(ref)``), so 0.1 means "the current
    distribution moved a tenth of a reference standard deviation". What it approximates: the raw-data
    distance with every value moved to its bin's reference mean, exact for discrete features whose values
    are the bins, within about a bin's width otherwise.
    """
    p, _ = _fractions(current)
    q = _normalise(reference)
    x = np.asarray(points, dtype=np.float64)
    # empty reference bins have no mean: carry the previous point forward so they add no distance
    x = _fill_forward(x)
    gaps = np.diff(x, axis=-1)
    cdf_gap = np.abs(np.cumsum(p - q, axis=-1)[..., :-1])
    w = np.where(np.isfinite(gaps), cdf_gap * np.nan_to_num(gaps), 0.0).sum(axis=-1)
    s = np.maximum(np.nan_to_num(np.asarray(std, dtype=np.float64), nan=0.0), 0.001)
    return w / s


def _fill_forward(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float64, copy=True)
    if x.ndim == 1:
        x = x[None, :]
        squeeze = True
    else:
        squeeze = False
    mask = np.isnan(x)
    if mask.any():
        idx = np.where(~mask, np.arange(x.shape[-1]), 0)
        np.maximum.accumulate(idx, axis=-1, out=idx)
        x = np.take_along_axis(x, idx, axis=-1)
        # leading NaNs (first bins empty): take the first real point
        first = np.argmax(~np.isnan(x), axis=-1)
        lead = np.isnan(x)
        x = np.where(lead, np.take_along_axis(x, first[:, None], axis=-1), x)
    return x[0] if squeeze else x


def ks_binned(reference: Any, current: Any, n_reference: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample Kolmogorov-Smirnov statistic from binned CDFs, and its p-value.

    ``D = max_i |F_p(i) - F_q(i)|`` compares the cumulative fractions at the bin edges only, so it is the
    exact two-sample KS statistic evaluated on the edges, a lower bound of the raw-data statistic (equal
    when the largest gap falls on an edge, as with discrete features). The p-value is
    ``scipy.stats.kstwo.sf(D, round(n_eff))`` with ``n_eff = n * m / (n + m)`` for ``n`` reference and
    ``m`` current values, the asymptotic method of ``scipy.stats.ks_2samp``; with a lower-bound D it is
    conservative (never smaller than the raw-data p-value's approximation).
    """
    from scipy.stats import kstwo

    p, m = _fractions(current)
    q = _normalise(reference)
    d = np.abs(np.cumsum(p - q, axis=-1)).max(axis=-1)
    n = np.asarray(n_reference, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_eff = np.round(n * m / (n + m))
        pvalue = np.where((n_eff >= 1) & np.isfinite(d), kstwo.sf(np.nan_to_num(d), np.maximum(n_eff, 1)), np.nan)
    return d, pvalue


def chi_square(reference: Any, current: Any, n_reference: Any = None,
               eps: float = EPS) -> tuple[np.ndarray, np.ndarray]:
    """Pearson's chi-square test of current counts against the reference distribution.

    With ``n_reference`` (the reference's number of values), the two-sample test of homogeneity on the
    2 x k table of reference and current counts, as ``scipy.stats.chi2_contingency(table, correction=False)``:
    it counts the reference's own sampling noise, so a baseline fitted on a sample no larger than the window
    does not make the test call everything significant. Without it, the goodness-of-fit test of the
    current counts to the reference fractions taken as exact, as ``scipy.stats.chisquare`` (Evidently's
    choice), where a bin empty in the reference gets fraction ``eps`` and the expected counts are rescaled
    to sum to the current total. Bins empty on both sides are left out; degrees of freedom: bins used - 1.
    Returns (statistic, p-value).
    """
    from scipy.stats import chi2

    obs = np.asarray(current, dtype=np.float64)
    q = _normalise(reference)
    n = obs.sum(axis=-1, keepdims=True)
    used = (q > 0) | (obs > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if n_reference is None:
            q = np.where(used & (q == 0), eps, q)
            q = q / np.where(q.sum(axis=-1, keepdims=True) > 0, q.sum(axis=-1, keepdims=True), 1.0)
            expected = q * n
            terms = np.where(used & (expected > 0), (obs - expected) ** 2 / expected, 0.0)
        else:
            m = np.asarray(n_reference, dtype=np.float64)[..., None] * np.ones_like(n)
            ref = q * m  # reference counts
            pooled = (ref + obs) / (m + n)
            e_ref, e_cur = pooled * m, pooled * n
            terms = np.where(used & (pooled > 0), (ref - e_ref) ** 2 / e_ref + (obs - e_cur) ** 2 / e_cur, 0.0)
    stat = terms.sum(axis=-1)
    dof = used.sum(axis=-1) - 1
    with np.errstate(invalid="ignore"):
        pvalue = np.where((dof >= 1) & (n[..., 0] > 0), chi2.sf(stat, np.maximum(dof, 1)), np.nan)
    stat = np.where(n[..., 0] > 0, stat, np.nan)
    return stat, pvalue


# ----------------------------------------------------------------------------------------------------
# Evidently's binning, for cross-checking
# ----------------------------------------------------------------------------------------------------
def evidently_binning(reference: Any, current: Any, categorical: bool = False,
                      fill_zeroes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current fractions binned the way Evidently's PSI and Jensen-Shannon tests bin them.

    Evidently (``get_binned_data``): a numeric feature with more than 20 distinct reference values gets
    ``np.histogram_bin_edges(reference + current, bins="sturges")`` (equal width, ``log2(n) + 1`` bins over
    the combined range); otherwise (categorical or few values) one bin per value seen in either sample.
    Fractions divide by each sample's size. With ``fill_zeroes`` (PSI), an empty bin becomes 0.0001, or the
    smallest non-zero fraction / 1e6 when that is below 0.0001 (Jensen-Shannon does not fill).
    """
    ref = np.asarray(reference)
    cur = np.asarray(current)
    if ref.dtype.kind == "f":
        ref = ref[~np.isnan(ref)]
    if cur.dtype.kind == "f":
        cur = cur[~np.isnan(cur)]
    ref_values = np.unique(ref)
    if not categorical and ref.dtype.kind in "fiub" and ref_values.size > 20:
        edges = np.histogram_bin_edges(np.concatenate([ref, cur]).astype(np.float64), bins="sturges")
        rp = np.histogram(ref, edges)[0] / len(ref)
        cp = np.histogram(cur, edges)[0] / len(cur)
    else:
        keys = np.unique(np.concatenate([ref, cur]))
        rp = np.array([np.sum(ref == k) for k in keys]) / len(ref)
        cp = np.array([np.sum(cur == k) for k in keys]) / len(cur)
    if fill_zeroes:
        rp, cp = _fill_zeroes(rp), _fill_zeroes(cp)
    return rp, cp


def _fill_zeroes(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64, copy=True)
    smallest = a[a > 0].min()
    a[a == 0] = smallest / 1e6 if smallest <= 0.0001 else 0.0001
    return a


def evidently_psi(reference: Any, current: Any, categorical: bool = False) -> float:
    """PSI on Evidently's binning of raw values: equals Evidently's ``psi`` stat test value.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> round(evidently_psi(rng.normal(size=5000), rng.normal(0.5, 1, size=5000)), 3)
    0.27
    """
    rp, cp = evidently_binning(reference, current, categorical)
    return float(np.sum((rp - cp) * np.log(rp / cp)))


# ----------------------------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------------------------
@dataclass
class DriftReport:
    """Drift of one window against the baseline.

    ``scores[method]`` and ``p_values[method]`` are arrays in feature order (NaN where a method does not
    apply: Wasserstein and KS to categoricals, chi-square to numeric features; or where the window had no
    values of the feature). ``drifted[j]`` is True when any alerting distance of feature ``j`` exceeds its
    threshold (or, with ``alert_on_pvalue``, its p-value is below ``pvalue``). ``drift_share`` is the share
    of drifted features among those with values; ``dataset_drift`` is ``drift_share >= share_threshold``.
    """

    feature_names: list[str]
    feature_kinds: list[str]
    n_rows: int
    counts: np.ndarray  # values per feature in the window (missing left out)
    scores: dict[str, np.ndarray]
    p_values: dict[str, np.ndarray]
    drifted: np.ndarray
    drift_share: float
    dataset_drift: bool
    prediction_scores: dict[str, float] = field(default_factory=dict)
    prediction_p_value: float = float("nan")
    prediction_drift: bool = False
    window_start: float | None = None
    window_end: float | None = None
    closed_by: str = "manual"  # "rows", "time" or "manual"
    baseline_id: str | None = None

    @property
    def drifted_features(self) -> list[str]:
        return [n for n, d in zip(self.feature_names, self.drifted) if d]

    @property
    def p_value(self) -> np.ndarray:
        """One p-value per feature: KS for numeric features, chi-square for categoricals and booleans."""
        return np.where(np.isnan(self.p_values[KS]), self.p_values[CHI_SQUARE], self.p_values[KS])

    def rows(self) -> list[dict[str, Any]]:
        """One dict per feature: name, kind, count, every method's score, p-value and drifted."""
        out = []
        pv = self.p_value
        for j, name in enumerate(self.feature_names):
            row: dict[str, Any] = {"feature": name, "kind": self.feature_kinds[j], "count": int(self.counts[j])}
            for method, values in self.scores.items():
                row[method] = float(values[j])
            row["p_value"] = float(pv[j])
            row["drifted"] = bool(self.drifted[j])
            out.append(row)
        return out

    def gauges(self) -> list[tuple[str, str, float]]:
        """(feature, method, score) for every finite score: what the ``ml.drift.score`` gauge reports."""
        out = []
        for method, values in self.scores.items():
            for name, v in zip(self.feature_names, values):
                if math.isfinite(float(v)):
                    out.append((name, method, float(v)))
        return out

    def to_dict(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return float(v) if math.isfinite(float(v)) else None

        return {
            "baseline_id": self.baseline_id,
            "n_rows": self.n_rows,
            "closed_by": self.closed_by,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "drift_share": self.drift_share,
            "dataset_drift": self.dataset_drift,
            "drifted_features": self.drifted_features,
            "features": [{k: (clean(v) if isinstance(v, float) else v) for k, v in r.items()} for r in self.rows()],
            "prediction": {"scores": {k: clean(v) for k, v in self.prediction_scores.items()},
                           "p_value": clean(self.prediction_p_value), "drifted": self.prediction_drift},
        }


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds; field names and defaults are those of :mod:`otel_ml.config`."""

    drift_threshold_psi: float = 0.1
    drift_threshold_js: float = 0.1
    drift_threshold_wasserstein: float = 0.1
    drift_alert_on_pvalue: bool = False
    drift_pvalue: float = 0.05
    drift_share_threshold: float = 0.5

    def by_method(self) -> dict[str, float]:
        return {PSI: self.drift_threshold_psi, JENSEN_SHANNON: self.drift_threshold_js,
                WASSERSTEIN: self.drift_threshold_wasserstein}


def compare(reference: np.ndarray, current: np.ndarray, kinds: list[str], points: np.ndarray, stds: np.ndarray,
            n_reference: np.ndarray, thresholds: Thresholds = Thresholds(),
            methods: tuple[str, ...] = DISTANCE_METHODS) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                                                  np.ndarray]:
    """Every method on every feature at once; returns (scores, p_values, drifted)."""
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    kinds_a = np.asarray(kinds)
    numeric = kinds_a == KIND_NUMERIC  # booleans are compared as categories (PSI, JS, chi-square)
    categorical = (kinds_a == KIND_CATEGORICAL) | (kinds_a == KIND_BOOLEAN)
    has_values = current.sum(axis=-1) > 0
    nan = np.full(len(kinds), np.nan)
    scores = {
        PSI: np.where(has_values, psi(reference, current), np.nan),
        JENSEN_SHANNON: np.where(has_values, jensen_shannon(reference, current), np.nan),
        WASSERSTEIN: np.where(has_values & numeric, wasserstein_normalised(reference, current, points, stds), np.nan),
    }
    ks_d, ks_p = ks_binned(reference, current, n_reference)
    chi_stat, chi_p = chi_square(reference, current, n_reference)
    numeric_only = has_values & numeric
    scores[KS] = np.where(numeric_only, ks_d, nan)
    scores[CHI_SQUARE] = np.where(has_values & categorical, chi_stat, nan)
    p_values = {KS: np.where(numeric_only, ks_p, nan), CHI_SQUARE: np.where(has_values & categorical, chi_p, nan)}
    limits = thresholds.by_method()
    drifted = np.zeros(len(kinds), dtype=bool)
    for method in methods:
        if method in limits:
            drifted |= np.nan_to_num(scores[method], nan=-np.inf) > limits[method]
    if thresholds.drift_alert_on_pvalue:
        pv = np.where(np.isnan(p_values[KS]), p_values[CHI_SQUARE], p_values[KS])
        drifted |= np.nan_to_num(pv, nan=np.inf) < thresholds.drift_pvalue
    return scores, p_values, drifted


def drift_report(baseline: Any, counts: np.ndarray, score_counts: np.ndarray | None = None, n_rows: int | None = None,
                 thresholds: Thresholds = Thresholds(), methods: tuple[str, ...] = DISTANCE_METHODS) -> DriftReport:
    """Compare one window of bin counts (from :meth:`Baseline.bin_counts`) with the baseline.

    >>> import numpy as np
    >>> from otel_ml.baseline import Baseline
    >>> rng = np.random.default_rng(1)
    >>> b = Baseline().fit(rng.normal(size=(20_000, 2)), feature_names=["same", "moved"])
    >>> now = np.column_stack([rng.normal(size=5000), rng.normal(0.5, 1, size=5000)])
    >>> r = drift_report(b, b.bin_counts(now))
    >>> r.drifted_features, [round(float(v), 3) for v in r.scores["psi"]]
    (['moved'], [0.003, 0.252])
    """
    counts = np.asarray(counts)
    scores, p_values, drifted = compare(
        baseline.reference_fractions, counts, baseline.feature_kinds, baseline.bin_means, baseline.stds,
        baseline.reference_counts.sum(axis=1), thresholds, methods)
    per_feature = counts.sum(axis=1)
    with_values = per_feature > 0
    share = float(drifted[with_values].mean()) if with_values.any() else 0.0
    report = DriftReport(
        feature_names=baseline.feature_names, feature_kinds=baseline.feature_kinds,
        n_rows=int(n_rows if n_rows is not None else per_feature.max(initial=0)), counts=per_feature,
        scores=scores, p_values=p_values, drifted=drifted, drift_share=share,
        dataset_drift=bool(with_values.any() and share >= thresholds.drift_share_threshold),
        baseline_id=None,
    )
    if score_counts is not None and baseline.score_fractions is not None and np.sum(score_counts) > 0:
        ref = baseline.score_fractions[None, :]
        cur = np.asarray(score_counts)[None, :]
        edges = np.asarray(baseline.score_edges, dtype=np.float64)
        lo = np.concatenate([[edges[0] - (edges[1] - edges[0]) if edges.size > 1 else 0.0], edges])
        hi = np.concatenate([edges, [edges[-1] + (edges[-1] - edges[-2]) if edges.size > 1 else 1.0]])
        centres = ((lo + hi) / 2)[None, :]
        std = _binned_std(ref[0], centres[0])
        n_ref = np.array([sum(baseline.prediction["score_counts"])])
        pscores, pp, pdrift = compare(ref, cur, [KIND_NUMERIC], centres, np.array([std]), n_ref, thresholds, methods)
        report.prediction_scores = {k: float(v[0]) for k, v in pscores.items() if k != CHI_SQUARE}
        report.prediction_p_value = float(pp[KS][0])
        report.prediction_drift = bool(pdrift[0])
    return report


def _binned_std(fractions: np.ndarray, centres: np.ndarray) -> float:
    mean = float((fractions * centres).sum())
    return math.sqrt(max(float((fractions * (centres - mean) ** 2).sum()), 0.0))


# ----------------------------------------------------------------------------------------------------
# windowed monitor
# ----------------------------------------------------------------------------------------------------
class DriftMonitor:
    """Adds up bin counts into windows and reports drift when a window closes.

    A window closes at the first :meth:`add` that brings it to ``window_rows`` rows (a batch is never
    split, so a window can hold more), or, once it holds at least ``min_rows`` rows, when ``window_seconds``
    have passed since it opened (checked on :meth:`add` and :meth:`tick`). A window that is due by time but
    has fewer than ``min_rows`` rows stays open and keeps counting. Memory is fixed: one
    ``(n_features, n_bins_max)`` count array and one score array, whatever the traffic. Thread-safe.

    >>> import numpy as np
    >>> from otel_ml.baseline import Baseline
    >>> b = Baseline().fit(np.random.default_rng(0).normal(size=(1000, 3)))
    >>> m = DriftMonitor(b, window_rows=100, window_seconds=60, min_rows=10)
    >>> m.add(b.bin_counts(np.zeros((60, 3))), n_rows=60, now=0.0) is None
    True
    >>> r = m.add(b.bin_counts(np.zeros((40, 3))), n_rows=40, now=1.0)
    >>> r.n_rows, r.closed_by, bool(r.dataset_drift)
    (100, 'rows', True)
    """

    def __init__(self, baseline: Any, window_rows: int = 1000, window_seconds: float = 300.0,
                 min_rows: int = 100, drift_threshold_psi: float = 0.1, drift_threshold_js: float = 0.1,
                 drift_threshold_wasserstein: float = 0.1, drift_alert_on_pvalue: bool = False,
                 drift_pvalue: float = 0.05, drift_share_threshold: float = 0.5,
                 methods: tuple[str, ...] = DISTANCE_METHODS, clock: Any = time.monotonic) -> None:
        unknown = [m for m in methods if m not in DISTANCE_METHODS]
        if unknown:
            raise ValueError(f"methods={unknown!r}: alerting methods are {', '.join(DISTANCE_METHODS)}")
        self.baseline = baseline
        self.window_rows = int(window_rows)
        self.window_seconds = float(window_seconds)
        self.min_rows = int(min_rows)
        self.thresholds = Thresholds(drift_threshold_psi, drift_threshold_js, drift_threshold_wasserstein,
                                     drift_alert_on_pvalue, drift_pvalue, drift_share_threshold)
        self.methods = tuple(methods)
        self._clock = clock
        self._lock = threading.Lock()
        shape = baseline.reference_fractions.shape
        self._counts = np.zeros(shape, dtype=np.int64)
        fr = baseline.score_fractions
        self._score_counts = None if fr is None else np.zeros(fr.shape, dtype=np.int64)
        self._rows = 0
        self._start: float | None = None
        self.baseline_id = getattr(baseline, "baseline_id", None)
        self.windows_closed = 0
        self.last_report: DriftReport | None = None

    @classmethod
    def from_config(cls, baseline: Any, config: Any) -> DriftMonitor:
        """A monitor with the windows and thresholds of an :class:`otel_ml.config.Config`."""
        return cls(baseline, window_rows=config.drift_window_rows, window_seconds=config.drift_window_seconds,
                   min_rows=config.drift_min_rows, drift_threshold_psi=config.drift_threshold_psi,
                   drift_threshold_js=config.drift_threshold_js,
                   drift_threshold_wasserstein=config.drift_threshold_wasserstein,
                   drift_alert_on_pvalue=config.drift_alert_on_pvalue, drift_pvalue=config.drift_pvalue,
                   drift_share_threshold=config.drift_share_threshold,
                   methods=getattr(config, "drift_methods", DISTANCE_METHODS))

    @property
    def rows_in_window(self) -> int:
        return self._rows

    def add(self, bin_counts: np.ndarray | None, score_counts: np.ndarray | None = None, n_rows: int = 0,
            now: float | None = None) -> DriftReport | None:
        """Count one batch; returns a :class:`DriftReport` when this closes the window, else None."""
        now = self._clock() if now is None else now
        with self._lock:
            if self._start is None:
                self._start = now
            if bin_counts is not None:
                self._counts += bin_counts
            if score_counts is not None and self._score_counts is not None:
                self._score_counts += score_counts
            self._rows += int(n_rows)
            if self._rows >= self.window_rows:
                return self._close(now, "rows")
            if now - self._start >= self.window_seconds and self._rows >= self.min_rows:
                return self._close(now, "time")
            return None

    def tick(self, now: float | None = None) -> DriftReport | None:
        """Close the window if it is due by time (call it from a timer when traffic may stop)."""
        return self.add(None, None, 0, now)

    def flush(self, now: float | None = None) -> DriftReport | None:
        """Close the window now if it holds any rows."""
        now = self._clock() if now is None else now
        with self._lock:
            return self._close(now, "manual") if self._rows else None

    def _close(self, now: float, reason: str) -> DriftReport:
        counts, scores, rows, start = self._counts, self._score_counts, self._rows, self._start
        self._counts = np.zeros_like(counts)
        self._score_counts = None if scores is None else np.zeros_like(scores)
        self._rows = 0
        self._start = None
        report = drift_report(self.baseline, counts, scores, rows, self.thresholds, self.methods)
        report.window_start, report.window_end, report.closed_by = start, now, reason
        report.baseline_id = self.baseline_id
        self.windows_closed += 1
        self.last_report = report
        return report


__all__ = [
    "CHI_SQUARE", "DISTANCE_METHODS", "DriftMonitor", "DriftReport", "EPS", "JENSEN_SHANNON", "KS", "METHODS",
    "PSI", "Thresholds", "WASSERSTEIN", "chi_square", "compare", "drift_report", "evidently_binning",
    "evidently_psi", "jensen_shannon", "ks_binned", "psi", "wasserstein_normalised",
]
