"""Reference statistics of a model's inputs and outputs, made at training time and compared at serving time.

Usage::

    from otel_ml.baseline import Baseline
    baseline = Baseline(n_bins=10).fit(X_train, y_train, scores=model.predict_proba(X_train))
    baseline.save("model.baseline.json")          # found next to model.pkl by find_baseline()
    counts = baseline.bin_counts(as_table(X_batch))  # serving time: (n_features, n_bins_max) int64

What a baseline holds, per feature (in the order the model sees them):

* ``kind``: ``numeric``, ``boolean`` or ``categorical`` (from :func:`otel_ml.frame.as_table`);
* ``count`` (non-missing values), ``missing``, ``mean``, ``std`` (population), ``min``, ``max``;
* numeric and boolean: inner bin ``edges``. Bins are closed on the right, like Prometheus and OpenTelemetry
  histogram buckets: bin 0 is ``(-inf, e1]``, bin i is ``(e_i, e_(i+1)]``, the last is ``(e_last, +inf)``, so
  every finite value lands in a bin. By default the edges are the reference quantiles ``1/n .. (n-1)/n``,
  deduplicated (a feature with few distinct values gets fewer bins, one per value). Quantiles are computed on
  a uniform random sample of ``sample_size`` rows (exact when the data has fewer rows); the bin *counts*
  are always exact over every row. Booleans have the single edge 0 (False | True);
* categorical: the ``categories`` seen, most frequent first (at most ``max_categories``), with their counts;
  the bins are the ``top_k`` most frequent categories plus a last ``__other__`` bin that also receives
  categories never seen in the reference;
* ``bin_counts`` and ``bin_means`` (the reference mean of the values in each bin: the point a bin stands for
  in the binned Wasserstein distance of :mod:`otel_ml.drift`).

For the prediction: the distribution of scores on 20 fixed probability bins (edges
:data:`otel_ml.semconv.SCORE_BUCKETS`, closed on the right like the score histogram), or on quantile bins
when scores are not probabilities (regression), and the predicted and true class counts. With labels and
probability scores, a calibration table (per score bin: rows, mean score, observed positive rate, or accuracy
for multiclass confidences) estimates accuracy from score counts alone before labels arrive
(:meth:`Baseline.expected_accuracy`, the confidence-based idea of NannyML's CBPE).

Missing values (None, NaN) and infinities are counted in ``missing``, never binned, and left out of the
moments. The JSON format is documented in ``docs/baseline-format.md``.

>>> import numpy as np
>>> X = np.column_stack([np.arange(100.0), np.arange(100) % 2 == 0])
>>> b = Baseline(n_bins=4).fit(X, feature_names=["age", "flag"])
>>> b.feature_names, b.feature_kinds
(['age', 'flag'], ['numeric', 'numeric'])
>>> b.features[0]["edges"]
[24.0, 49.0, 74.0]
>>> b.reference_fractions.tolist()
[[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]]
>>> from otel_ml.frame import as_table
>>> b.bin_counts(as_table(np.array([[10.0, 1.0], [80.0, np.nan]]))).tolist()
[[1, 0, 0, 1], [0, 1, 0, 0]]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from otel_ml.frame import KIND_BOOLEAN, KIND_CATEGORICAL, Table, as_table
from otel_ml.semconv import SCORE_BUCKETS

FORMAT = "otel-ml/baseline"
VERSION = 1
OTHER = "__other__"
MODEL_ATTRIBUTE = "_otel_ml_baseline"  # attribute name under which a fitted model carries its baseline dict

SCORE_PROBABILITY = "probability"
SCORE_VALUE = "value"

_CHUNK_ROWS = 8192  # rows per block of the single pass: a block of 20 float64 columns stays in L2 cache
_PLAN_CACHE_SIZE = 8
_SMALL = 512  # rows x edges below which binning uses one broadcast comparison


class BaselineMergeError(ValueError):
    """Two baselines cannot be merged (different features, kinds or bin edges)."""


# ----------------------------------------------------------------------------------------------------
# Moments: count, mean, M2 (sum of squared deviations), min, max per column, merged with Chan's formula
# ----------------------------------------------------------------------------------------------------
def _chan(n_a: np.ndarray, mean_a: np.ndarray, m2_a: np.ndarray,
          n_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combine two (count, mean, M2) summaries exactly (Chan, Golub, LeVeque 1979; Welford's update for n_b=1)."""
    n = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = mean_b - mean_a
        share_b = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
        mean = np.where(n_a == 0, mean_b, np.where(n_b == 0, mean_a, mean_a + delta * share_b))
        m2 = np.where(n_a == 0, m2_b, np.where(n_b == 0, m2_a,
                                               m2_a + m2_b + delta * delta * n_a * share_b))
    return n, mean, m2


def _block_stats(block: np.ndarray, E: np.ndarray) -> tuple[np.ndarray, ...]:
    """count, mean, M2, min, max and flat bin counts of each column of ``block``, non-finite values left out.

    One pass of each kind over the whole block, no masks: NaN compares False with every edge and lands in
    bin 0, +inf in the column's last bin, -inf in bin 0; ``fmin``/``fmax`` skip NaN. Only the columns whose
    sum is not finite (they hold NaN or inf) are then copied out to get their moments without those values
    and to take them back out of the bin counts.
    """
    rows, p = block.shape
    n_bins = E.shape[0] + 1
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in columns redone below
        sums = block.sum(axis=0)
        mean = sums / max(rows, 1)
        centred = block - mean
        m2 = np.einsum("ij,ij->j", centred, centred)
    n = np.full(p, rows, dtype=np.int64)
    lo, hi = np.fmin.reduce(block, axis=0), np.fmax.reduce(block, axis=0)
    counts = np.bincount(_bin_index(block, E, check_finite=False).ravel(), minlength=p * (n_bins + 1))
    clean = np.isfinite(sums)
    if clean.all():
        return n, mean, m2, lo, hi, counts
    cols = np.flatnonzero(~clean)
    sub = block[:, cols]
    finite = np.isfinite(sub)
    bn = finite.sum(axis=0)
    z = np.where(finite, sub, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        bmean = z.sum(axis=0) / np.maximum(bn, 1)
        z -= bmean
        # masked entries hold -mean after centring: each added mean^2 to the sum of squares, taken out here
        bm2 = np.einsum("ij,ij->j", z, z) - (rows - bn) * np.square(bmean)
    n[cols], mean[cols], m2[cols] = bn, np.where(bn > 0, bmean, 0.0), np.maximum(bm2, 0.0)
    counts = counts.reshape(p, n_bins + 1)
    n_nan = np.isnan(sub).sum(axis=0)
    counts[cols, 0] -= n_nan
    if np.isinf(lo[cols]).any() or np.isinf(hi[cols]).any():  # rare: infinities to take out too
        counts[cols, 0] -= np.isneginf(sub).sum(axis=0)
        n_edges = np.isfinite(E[:, cols]).sum(axis=0)
        counts[cols, n_edges] -= np.isposinf(sub).sum(axis=0)
        lo[cols] = np.where(finite, sub, np.inf).min(axis=0)
        hi[cols] = np.where(finite, sub, -np.inf).max(axis=0)
    return n, mean, m2, lo, hi, counts.ravel()


# ----------------------------------------------------------------------------------------------------
# Binning: one vectorised expression for all numeric columns
# ----------------------------------------------------------------------------------------------------
def _edge_matrix(edges: Sequence[Sequence[float]]) -> np.ndarray:
    """Inner edges of each column as a (max_edges, n_columns) matrix padded with +inf (never exceeded)."""
    width = max((len(e) for e in edges), default=0)
    E = np.full((width, len(edges)), np.inf)
    for j, e in enumerate(edges):
        E[: len(e), j] = e
    return E


def _bin_index(block: np.ndarray, E: np.ndarray, check_finite: bool = True) -> np.ndarray:
    """Flat bin code of every value: ``column * (n_bins + 1) + bin``, ready for one ``np.bincount``.

    The bin is the number of inner edges strictly below the value (bins closed on the right), computed
    for all columns at once, one comparison per edge. Non-finite values get the code of an extra
    discard bin (``bin = n_bins``) that :func:`_count_bins` drops.
    """
    n_bins = E.shape[0] + 1
    n_cols = block.shape[1]
    stride = n_bins + 1
    dtype = np.uint16 if n_cols * stride < 2**16 else np.int64
    offsets = (np.arange(n_cols) * stride).astype(dtype)
    if block.shape[0] * E.shape[0] <= _SMALL:  # few rows: one broadcast comparison, fewer numpy calls
        idx = (block[:, None, :] > E).sum(axis=1, dtype=dtype)
        idx += offsets
    else:  # many rows: one pass per edge over the block, in place
        idx = np.empty(block.shape, dtype=dtype)
        idx[...] = offsets
        above = np.empty(block.shape, dtype=bool)
        step = above.view(np.uint8)
        for k in range(E.shape[0]):
            np.greater(block, E[k], out=above)
            np.add(idx, step, out=idx, casting="unsafe")
    if check_finite:
        finite = np.isfinite(block)
        if not finite.all():
            np.copyto(idx, (offsets + n_bins).astype(dtype), where=~finite)
    return idx


def _count_bins(idx: np.ndarray, n_bins: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Counts (or weight sums) per (column, bin) of a :func:`_bin_index` code matrix, discard bin dropped."""
    n_cols = idx.shape[1]
    counts = np.bincount(idx.ravel(), weights=None if weights is None else weights.ravel(),
                         minlength=n_cols * (n_bins + 1))
    return counts.reshape(n_cols, n_bins + 1)[:, :n_bins]


def reduce_scores(scores: Any) -> tuple[np.ndarray, str]:
    """One score per row: a 1-D array as is, two columns -> column 1 (the positive class), more -> row max.

    Returns the scores and how they were made (``value``, ``positive_class`` or ``max``).

    >>> reduce_scores([[0.9, 0.1], [0.2, 0.8]])[0].tolist()
    [0.1, 0.8]
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 0:
        return s.reshape(1), "value"
    if s.ndim == 1:
        return s, "value"
    s = s.reshape(s.shape[0], -1)
    if s.shape[1] == 1:
        return s[:, 0], "value"
    if s.shape[1] == 2:
        return s[:, 1], "positive_class"
    return s.max(axis=1), "max"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value
    return str(value)


def _num(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _sort_key(item: tuple[Any, int]) -> tuple[int, str]:
    return (-item[1], str(item[0]))


class Baseline:
    """Per-feature and prediction reference statistics; ``fit`` returns ``self``.

    Parameters
    ----------
    n_bins:
        Bins per numeric feature (reference quantiles; fewer when quantiles coincide).
    top_k:
        Categories with their own bin; the rest share the ``__other__`` bin.
    binning:
        ``"quantile"`` (default) or ``"uniform"`` (equal width between the sample's min and max).
    edges:
        Inner bin edges to use instead of computing them: a mapping feature name -> edges, or another
        :class:`Baseline` (its feature edges, score edges and calibration's positive label). Baselines
        with equal edges merge; fitting parts of a data set with ``edges=`` of the whole (or of a
        baseline fitted on a sample of it) is how partial baselines are made mergeable.
    sample_size:
        Rows (uniform random, without replacement) on which quantile edges are computed: the reference
        fraction of a bin then deviates from ``1/n_bins`` by about ``sqrt(f (1 - f) / sample_size)``, 0.13 %
        for 10 bins and 50,000 rows. Bin counts and moments are exact over every row.
    max_categories:
        Categories remembered per feature (for validation's unseen-category check).
    random_state:
        Seed of the quantile sample, so that fitting twice gives the same baseline.
    """

    def __init__(self, n_bins: int = 10, top_k: int = 20, binning: str = "quantile",
                 edges: dict[str, Sequence[float]] | Baseline | None = None, sample_size: int = 50_000,
                 max_categories: int = 1000, random_state: int = 0) -> None:
        if n_bins < 1:
            raise ValueError(f"n_bins={n_bins!r}: expected an integer >= 1")
        if binning not in ("quantile", "uniform"):
            raise ValueError(f"binning={binning!r}: expected 'quantile' or 'uniform'")
        self.n_bins = n_bins
        self.top_k = top_k
        self.binning = binning
        self.edges = edges
        self.sample_size = sample_size
        self.max_categories = max_categories
        self.random_state = random_state
        self.features: list[dict[str, Any]] = []
        self.prediction: dict[str, Any] | None = None
        self.target: dict[str, Any] | None = None
        self.calibration: dict[str, Any] | None = None
        self.n_rows = 0
        self._compiled: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------------
    # fit
    # ------------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, scores: Any = None, feature_names: list[str] | None = None,
            predictions: Any = None) -> Baseline:
        """Learn the reference statistics of ``X`` (and of ``scores``, ``predictions`` and labels ``y``)."""
        table = as_table(X, feature_names=feature_names)
        self.n_rows = int(table.n_rows)
        self.feature_names_in_ = list(table.names)
        given = self._given_edges()
        features: list[dict[str, Any]] = [
            {"name": name, "kind": kind} for name, kind in zip(table.names, table.kinds, strict=True)
        ]
        if table.numeric.shape[1]:
            self._fit_numeric(table, features, given)
        for j, column in table.categorical.items():
            features[j].update(self._fit_categorical(column))
        self.features = features
        self._fit_outputs(y, scores, predictions)
        self._compiled = None
        return self

    def _given_edges(self) -> dict[str, list[float]]:
        if self.edges is None:
            return {}
        if isinstance(self.edges, Baseline):
            return {f["name"]: list(f["edges"]) for f in self.edges.features if "edges" in f}
        return {str(k): [float(v) for v in e] for k, e in self.edges.items()}

    def _sample(self, M: np.ndarray) -> np.ndarray:
        if M.shape[0] <= self.sample_size:
            return M
        rng = np.random.default_rng(self.random_state)
        rows = np.sort(rng.choice(M.shape[0], size=self.sample_size, replace=False))
        return M[rows]

    def _compute_edges(self, sample: np.ndarray, kinds: list[str]) -> list[list[float]]:
        qs = np.linspace(0.0, 1.0, self.n_bins + 1)[1:-1]
        all_finite = bool(np.isfinite(sample).all())
        if self.binning == "quantile" and all_finite and sample.shape[0] and qs.size:
            Q = np.quantile(sample, qs, axis=0, method="inverted_cdf")
        else:
            Q = None
        out = []
        for j, kind in enumerate(kinds):
            if kind == KIND_BOOLEAN:
                out.append([0.0])
                continue
            col = sample[:, j] if all_finite else sample[:, j][np.isfinite(sample[:, j])]
            if col.size == 0:
                out.append([])
            elif self.binning == "quantile":
                q = Q[:, j] if Q is not None else np.quantile(col, qs, method="inverted_cdf")
                out.append(np.unique(q).tolist())
            else:
                out.append(np.unique(np.linspace(col.min(), col.max(), self.n_bins + 1)[1:-1]).tolist())
        return out

    def _fit_numeric(self, table: Table, features: list[dict[str, Any]], given: dict[str, list[float]]) -> None:
        M = table.numeric
        idx_map = table.numeric_index
        kinds = [table.kinds[j] for j in idx_map]
        names = [table.names[j] for j in idx_map]
        sample = self._sample(M)
        if all(name in given for name in names):
            edges = [given[name] for name in names]
        else:
            edges = self._compute_edges(sample, kinds)
            edges = [given.get(name, e) for name, e in zip(names, edges, strict=True)]
        E = _edge_matrix(edges)
        n_bins = E.shape[0] + 1
        p = M.shape[1]
        n = np.zeros(p, dtype=np.int64)
        mean = np.zeros(p)
        m2 = np.zeros(p)
        lo = np.full(p, np.inf)
        hi = np.full(p, -np.inf)
        counts = np.zeros(p * (n_bins + 1), dtype=np.int64)
        for start in range(0, M.shape[0], _CHUNK_ROWS):
            block = M[start:start + _CHUNK_ROWS]
            bn, bmean, bm2, blo, bhi, bcounts = _block_stats(block, E)
            n, mean, m2 = _chan(n, mean, m2, bn, bmean, bm2)
            np.minimum(lo, blo, out=lo)
            np.maximum(hi, bhi, out=hi)
            counts += bcounts
        counts = counts.reshape(p, n_bins + 1)[:, :n_bins]
        # the value a bin stands for (binned Wasserstein): the mean of the sample's values in it
        sample_idx = _bin_index(sample, E)
        s_counts = _count_bins(sample_idx, n_bins)
        s_sums = _count_bins(sample_idx, n_bins, weights=np.where(np.isfinite(sample), sample, 0.0))
        rows = table.rows_kept
        for c, j in enumerate(idx_map):
            k = len(edges[c]) + 1
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.where(s_counts[c, :k] > 0, s_sums[c, :k] / np.maximum(s_counts[c, :k], 1), np.nan)
            features[j].update({
                "count": int(n[c]),
                "missing": int(rows - n[c]),
                "mean": _num(mean[c]) if n[c] else None,
                "std": _num(math.sqrt(max(m2[c], 0.0) / n[c])) if n[c] else None,
                "min": _num(lo[c]) if n[c] else None,
                "max": _num(hi[c]) if n[c] else None,
                "edges": [float(e) for e in edges[c]],
                "bin_counts": counts[c, :k].tolist(),
                "bin_means": [_num(v) for v in means],
            })

    def _fit_categorical(self, column: np.ndarray) -> dict[str, Any]:
        raw = Counter(column.tolist())  # hashing the values once; the distinct ones are few
        counter: Counter[Any] = Counter()
        missing = 0
        for value, n in raw.items():
            if _missing(value):
                missing += n
            else:
                counter[_jsonable(value)] += n
        ranked = sorted(counter.items(), key=_sort_key)
        kept = ranked[: self.max_categories]
        return {
            "count": int(len(column) - missing),
            "missing": int(missing),
            "categories": [c for c, _ in kept],
            "category_counts": [int(n) for _, n in kept],
            "categories_complete": len(ranked) <= self.max_categories,
            "n_distinct": len(ranked),
            "bin_counts": self._category_bins(ranked),
        }

    def _category_bins(self, ranked: list[tuple[Any, int]]) -> list[int]:
        top = [int(n) for _, n in ranked[: self.top_k]]
        rest = sum(int(n) for _, n in ranked[self.top_k:])
        return top + [rest]

    def _fit_outputs(self, y: Any, scores: Any, predictions: Any) -> None:
        self.prediction = None
        self.target = None
        self.calibration = None
        s = None
        like = self.edges.prediction if isinstance(self.edges, Baseline) else None
        if scores is not None:
            s, source = reduce_scores(scores)
            finite = s[np.isfinite(s)]
            is_prob = finite.size > 0 and finite.min() >= 0.0 and finite.max() <= 1.0
            if like and "score_edges" in like:  # score bins of the baseline given as edges=
                is_prob = like["score_kind"] == SCORE_PROBABILITY
                edges = list(like["score_edges"])
            elif is_prob:
                edges = [float(e) for e in SCORE_BUCKETS]
            else:
                qs = np.linspace(0.0, 1.0, len(SCORE_BUCKETS) + 2)[1:-1]
                edges = np.unique(np.quantile(finite, qs)).tolist() if finite.size else []
            counts = _count_bins(_bin_index(s.reshape(-1, 1), _edge_matrix([edges])),
                                 len(edges) + 1)[0]
            self.prediction = {
                "score_kind": SCORE_PROBABILITY if is_prob else SCORE_VALUE,
                "score_source": source,
                "score_edges": edges,
                "score_counts": counts.astype(np.int64).tolist(),
                "score_missing": int(s.size - finite.size),
            }
        if predictions is not None:
            labels, counts = _class_counts(predictions)
            self.prediction = self.prediction or {}
            self.prediction.update({"classes": labels, "class_counts": counts})
        if y is not None:
            labels, counts = _class_counts(y)
            if len(labels) <= 1000:
                self.target = {"classes": labels, "class_counts": counts}
            if s is not None and self.prediction and self.prediction["score_kind"] == SCORE_PROBABILITY:
                given = self.edges.calibration if isinstance(self.edges, Baseline) else None
                self.calibration = _calibration(np.asarray(y), s, source, predictions,
                                                self.prediction["score_edges"],
                                                given.get("positive_label") if given else None)

    # ------------------------------------------------------------------------------------------------
    # serving-time API
    # ------------------------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [f["name"] for f in self.features]

    @property
    def feature_kinds(self) -> list[str]:
        return [f["kind"] for f in self.features]

    @property
    def n_bins_max(self) -> int:
        return self._compile()["n_bins_max"]

    @property
    def reference_counts(self) -> np.ndarray:
        """Reference bin counts, (n_features, n_bins_max) int64, zero-padded on the right."""
        return self._compile()["ref_counts"]

    @property
    def reference_fractions(self) -> np.ndarray:
        """Reference bin fractions, same shape as :meth:`bin_counts`; each row sums to 1 (0 if no data)."""
        return self._compile()["ref_fractions"]

    @property
    def bin_means(self) -> np.ndarray:
        """Reference mean of each numeric bin (NaN for categoricals and empty bins), same shape."""
        return self._compile()["bin_means"]

    @property
    def n_bins_per_feature(self) -> np.ndarray:
        return self._compile()["n_bins"]

    @property
    def stds(self) -> np.ndarray:
        """Reference standard deviation per feature (NaN for categoricals)."""
        return self._compile()["stds"]

    @property
    def score_fractions(self) -> np.ndarray | None:
        c = self._compile()["score_counts"]
        if c is None:
            return None
        total = c.sum()
        return c / total if total else c.astype(np.float64)

    @property
    def score_edges(self) -> list[float] | None:
        return None if self.prediction is None or "score_edges" not in self.prediction else list(
            self.prediction["score_edges"])

    @property
    def baseline_id(self) -> str:
        """Content hash of the baseline (16 hex digits): equal statistics (to 12 digits), equal id."""
        return _content_id(self._body())

    def bin_labels(self, feature: int | str) -> list[str]:
        """Human-readable bins of one feature, e.g. ``['(-inf, 1.5]', '(1.5, +inf)']``."""
        f = self.features[feature if isinstance(feature, int) else self.feature_names.index(feature)]
        if f["kind"] == KIND_CATEGORICAL:
            return [str(c) for c in f["categories"][: self.top_k]] + [OTHER]
        bounds = ["-inf"] + [f"{e:.6g}" for e in f["edges"]] + ["+inf"]
        return [f"({a}, {b}]" if b != "+inf" else f"({a}, +inf)" for a, b in zip(bounds, bounds[1:])]

    def bin_counts(self, table: Table | Any) -> np.ndarray:
        """Counts per feature and bin of a batch: (n_features, n_bins_max) int64, missing values not binned.

        ``table`` is a :class:`~otel_ml.frame.Table` (or anything :func:`~otel_ml.frame.as_table` takes).
        Columns are matched to baseline features by name, else by position when the column count is equal
        (plain arrays); a feature absent from the batch, or of another kind (text where numbers were
        expected), gets no counts. Categories outside the top-K, or never seen, count in the last
        (``__other__``) bin. Counts are of the rows the table kept (``table.rows_kept``).
        """
        if not isinstance(table, Table):
            table = as_table(table)
        c = self._compile()
        out = np.zeros((len(self.features), c["n_bins_max"]), dtype=np.int64)
        plan = self._plan(table)
        M = table.numeric
        if plan["num_dst"].size and M.shape[0]:
            src, E = plan["num_src"], plan["E"]
            nb = E.shape[0] + 1
            size = len(src) * (nb + 1)
            if M.shape[0] * E.shape[0] <= _SMALL:  # a few rows: one broadcast comparison, few numpy calls
                block = M if plan["num_identity"] else M[:, src]
                idx = (block[:, None, :] > E).sum(axis=1)
                idx += plan["offsets"]
                finite = np.isfinite(block)
                if not finite.all():
                    idx[~finite] = size  # past the last code: dropped below
                counts = np.bincount(idx.ravel(), minlength=size + 1)[:size]
            else:
                counts = np.zeros(size, dtype=np.int64)
                for start in range(0, M.shape[0], _CHUNK_ROWS):  # row blocks: bounded temporary memory
                    block = M[start:start + _CHUNK_ROWS]
                    if not plan["num_identity"]:
                        block = block[:, src]
                    counts += np.bincount(_bin_index(block, E).ravel(), minlength=size)
            out[plan["num_dst"], :nb] = counts.reshape(len(src), nb + 1)[:, :nb]
        for dst, src_j, source in plan["cat"]:
            values = table.categorical[src_j] if source == "categorical" else table.numeric[:, src_j]
            out[dst] = self._category_counts(dst, values)
        return out

    def _category_counts(self, j: int, values: Iterable[Any]) -> np.ndarray:
        lookup = self._compile()["lookups"][j]
        other = len(lookup)
        codes = [lookup.get(v, other) for v in values if not _missing(v)]
        counts = np.bincount(np.asarray(codes, dtype=np.intp), minlength=self._compile()["n_bins_max"])
        return counts

    def score_bin_counts(self, scores: Any) -> np.ndarray:
        """Counts of scores per score bin (1-D int64); 2-D scores are reduced like :func:`reduce_scores`.

        Bins are closed on the right like the score histogram's buckets; NaN / inf scores are not counted.
        """
        edges = self._compile()["score_edges"]
        if edges is None:
            raise ValueError("this baseline has no prediction scores (fit it with scores=...)")
        s, _ = reduce_scores(scores)
        if not np.isfinite(s).all():
            s = s[np.isfinite(s)]
        return np.bincount(np.searchsorted(edges, s, side="left"), minlength=edges.size + 1)

    def expected_accuracy(self, score_counts: Any) -> float:
        """Accuracy expected from a window's score counts and the reference calibration (CBPE-style).

        Each score bin contributes its rows times the reference probability that a prediction in that bin
        is right: for binary scores the observed positive rate ``r`` when the bin predicts positive
        (scores above 0.5), else ``1 - r``; for multiclass confidences the observed accuracy. A bin with
        no labelled reference rows falls back on its mean score, i.e. assumes calibration.
        """
        if self.calibration is None:
            raise ValueError("this baseline has no calibration (fit it with y=... and probability scores)")
        cal = self.calibration
        n = np.asarray(score_counts, dtype=np.float64)
        rows = np.asarray(cal["rows"], dtype=np.float64)
        edges = np.asarray(self.prediction["score_edges"])
        centres = (np.concatenate([[0.0], edges]) + np.concatenate([edges, [1.0]])) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(rows > 0, np.asarray(cal["hits"], dtype=np.float64) / np.maximum(rows, 1), centres)
        if cal["kind"] == "binary":
            right = np.where(centres > 0.5, rate, 1.0 - rate)
        else:
            right = rate
        total = n.sum()
        return float((n * right).sum() / total) if total else float("nan")

    def _compile(self) -> dict[str, Any]:
        if self._compiled is not None:
            return self._compiled
        feats = self.features
        n_bins = np.array([len(f["bin_counts"]) for f in feats], dtype=np.int64)
        width = int(n_bins.max()) if len(feats) else 1
        ref = np.zeros((len(feats), width), dtype=np.int64)
        means = np.full((len(feats), width), np.nan)
        for j, f in enumerate(feats):
            ref[j, : n_bins[j]] = f["bin_counts"]
            if "bin_means" in f:
                means[j, : n_bins[j]] = [np.nan if v is None else v for v in f["bin_means"]]
        totals = ref.sum(axis=1, keepdims=True)
        fractions = np.divide(ref, totals, out=np.zeros(ref.shape), where=totals > 0)
        numeric = [j for j, f in enumerate(feats) if f["kind"] != KIND_CATEGORICAL]
        lookups = {}
        for j, f in enumerate(feats):
            if f["kind"] == KIND_CATEGORICAL:
                lookups[j] = {c: i for i, c in enumerate(f["categories"][: self.top_k])}
        score_edges = None
        score_counts = None
        if self.prediction and "score_edges" in self.prediction:
            score_edges = np.asarray(self.prediction["score_edges"], dtype=np.float64)
            score_counts = np.asarray(self.prediction["score_counts"], dtype=np.int64)
        self._compiled = {
            "n_bins": n_bins,
            "n_bins_max": width,
            "ref_counts": ref,
            "ref_fractions": fractions,
            "bin_means": means,
            "stds": np.array([np.nan if f.get("std") is None or f["kind"] == KIND_CATEGORICAL else f["std"]
                              for f in feats], dtype=np.float64),
            "numeric": numeric,
            "E": _edge_matrix([feats[j]["edges"] for j in numeric]),
            "lookups": lookups,
            "score_edges": score_edges,
            "score_counts": score_counts,
            "plans": {},
        }
        return self._compiled

    def _plan(self, table: Table) -> dict[str, Any]:
        """How the columns of a table map onto baseline features; cached per (names, kinds)."""
        c = self._compile()
        key = (tuple(table.names), tuple(table.kinds))
        plan = c["plans"].get(key)
        if plan is not None:
            return plan
        names = self.feature_names
        position = {name: j for j, name in enumerate(table.names)}
        if not all(n in position for n in names) and table.n_features == len(names):
            position = {name: j for j, name in enumerate(names)}  # plain arrays: match by position
        numeric_col = {j: col for col, j in enumerate(table.numeric_index)}
        num_src, num_dst, num_ecols, cat = [], [], [], []
        for ecol, j in enumerate(c["numeric"]):
            src = position.get(names[j])
            if src is not None and src in numeric_col:
                num_src.append(numeric_col[src])
                num_dst.append(j)
                num_ecols.append(ecol)
        for j, f in enumerate(self.features):
            if f["kind"] != KIND_CATEGORICAL:
                continue
            src = position.get(names[j])
            if src is None:
                continue
            if src in table.categorical:
                cat.append((j, src, "categorical"))
            elif src in numeric_col:
                cat.append((j, numeric_col[src], "numeric"))
        E = c["E"] if len(num_ecols) == len(c["numeric"]) else c["E"][:, num_ecols]
        plan = {
            "E": E,
            "offsets": np.arange(len(num_src), dtype=np.intp) * (E.shape[0] + 2),
            "num_src": np.asarray(num_src, dtype=np.intp),
            "num_dst": np.asarray(num_dst, dtype=np.intp),
            "num_identity": num_src == list(range(table.numeric.shape[1])),
            "cat": cat,
        }
        if len(c["plans"]) >= _PLAN_CACHE_SIZE:
            c["plans"].clear()
        c["plans"][key] = plan
        return plan

    # ------------------------------------------------------------------------------------------------
    # merge
    # ------------------------------------------------------------------------------------------------
    def __add__(self, other: Baseline) -> Baseline:
        return Baseline.merge([self, other])

    @staticmethod
    def merge(baselines: Sequence[Baseline]) -> Baseline:
        """One baseline with the statistics of all the data the given baselines were fitted on.

        Counts, missing, min and max add up; mean and std combine exactly (Chan et al.); numeric bins
        require equal edges (fit the parts with ``edges=`` of one baseline) and raise
        :class:`BaselineMergeError` otherwise; category counts add up and the top-K bins are recomputed,
        which is exact while every part remembers all its categories (``categories_complete``).

        >>> import numpy as np
        >>> x = np.arange(10.0).reshape(-1, 1)
        >>> whole = Baseline(n_bins=2).fit(x)
        >>> halves = Baseline(edges=whole).fit(x[:5]) + Baseline(edges=whole).fit(x[5:])
        >>> halves.features[0]["bin_counts"], bool(abs(halves.features[0]["std"] - x.std()) < 1e-12)
        ([5, 5], True)
        """
        if not baselines:
            raise ValueError("nothing to merge")
        first = baselines[0]
        out = Baseline(n_bins=first.n_bins, top_k=first.top_k, binning=first.binning,
                       sample_size=first.sample_size, max_categories=first.max_categories,
                       random_state=first.random_state)
        out.features = [dict(f) for f in first.features]
        out.n_rows = first.n_rows
        out.prediction = None if first.prediction is None else json.loads(json.dumps(first.prediction))
        out.target = None if first.target is None else json.loads(json.dumps(first.target))
        out.calibration = None if first.calibration is None else json.loads(json.dumps(first.calibration))
        for other in baselines[1:]:
            if other.feature_names != out.feature_names or other.feature_kinds != out.feature_kinds:
                raise BaselineMergeError("baselines describe different features or kinds: "
                                         f"{out.feature_names} vs {other.feature_names}")
            out.n_rows += other.n_rows
            out.features = [_merge_feature(a, b, out.top_k) for a, b in zip(out.features, other.features)]
            out.prediction = _merge_prediction(out.prediction, other.prediction)
            out.target = _merge_classes(out.target, other.target)
            out.calibration = _merge_calibration(out.calibration, other.calibration)
        if hasattr(first, "feature_names_in_"):
            out.feature_names_in_ = list(first.feature_names_in_)
        return out

    # ------------------------------------------------------------------------------------------------
    # (de)serialisation
    # ------------------------------------------------------------------------------------------------
    def _body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "params": {"n_bins": self.n_bins, "top_k": self.top_k, "binning": self.binning,
                       "sample_size": self.sample_size, "max_categories": self.max_categories,
                       "random_state": self.random_state},
            "n_rows": int(self.n_rows),
            "features": self.features,
            "prediction": self.prediction,
            "target": self.target,
            "calibration": self.calibration,
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (plain dicts, lists, numbers and strings) with its ``baseline_id``."""
        body = json.loads(json.dumps(self._body()))
        body["baseline_id"] = _content_id(body)
        return body

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Baseline:
        if doc.get("format") != FORMAT:
            raise ValueError(f"not an otel-ml baseline: format={doc.get('format')!r}")
        if doc.get("version") != VERSION:
            raise ValueError(f"baseline version {doc.get('version')!r} is not supported (expected {VERSION})")
        params = doc.get("params", {})
        b = cls(**{k: params[k] for k in ("n_bins", "top_k", "binning", "sample_size", "max_categories",
                                          "random_state") if k in params})
        b.n_rows = int(doc.get("n_rows", 0))
        b.features = [dict(f) for f in doc["features"]]
        b.prediction = doc.get("prediction")
        b.target = doc.get("target")
        b.calibration = doc.get("calibration")
        b.feature_names_in_ = b.feature_names
        return b

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Baseline:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_model_attribute(self) -> dict[str, Any]:
        """A plain JSON-able dict to set on a fitted model (pickles and unpickles without otel-ml)."""
        return self.to_dict()

    @classmethod
    def from_model_attribute(cls, obj: Any) -> Baseline | None:
        """The baseline a model carries (``obj`` is the model or the dict itself), or None."""
        doc = obj if isinstance(obj, dict) else getattr(obj, MODEL_ATTRIBUTE, None)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return None
        return cls.from_dict(doc)

    def __repr__(self) -> str:
        if not self.features:
            return f"Baseline(n_bins={self.n_bins}, top_k={self.top_k})"
        return f"Baseline(features={len(self.features)}, rows={self.n_rows}, id={self.baseline_id})"


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return not math.isfinite(value)
    return False


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _content_id(body: dict[str, Any]) -> str:
    """sha256 of the canonical JSON, floats to 12 significant digits (so that summing in another order,
    e.g. chunk by chunk, gives the same id)."""
    doc = _rounded({k: v for k, v in body.items() if k != "baseline_id"})
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _class_counts(values: Any) -> tuple[list[Any], list[int]]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype == object:
        counter = Counter(_jsonable(v) for v in arr if not _missing(v))
        ranked = sorted(counter.items(), key=lambda kv: str(kv[0]))
        return [k for k, _ in ranked], [int(n) for _, n in ranked]
    labels, counts = np.unique(arr[~np.isnan(arr)] if arr.dtype.kind == "f" else arr, return_counts=True)
    return [_jsonable(v) for v in labels], [int(n) for n in counts]


def _calibration(y: np.ndarray, s: np.ndarray, source: str, predictions: Any,
                 edges: list[float], positive: Any = None) -> dict[str, Any] | None:
    y = y.reshape(-1)
    if y.shape[0] != s.shape[0]:
        return None
    labels = np.unique(y)
    if source == "max":
        if predictions is None:
            return None
        hits = np.asarray(predictions).reshape(-1) == y
        kind, positive = "confidence", None
    elif labels.size <= 2:
        if positive is None:
            positive = labels[-1] if labels.size else 1
        hits = y == positive
        kind = "binary"
    else:
        return None
    finite = np.isfinite(s)
    E = _edge_matrix([edges])
    nb = len(edges) + 1
    idx = _bin_index(s[finite].reshape(-1, 1), E)
    rows = _count_bins(idx, nb)[0]
    score_sum = _count_bins(idx, nb, weights=s[finite].reshape(-1, 1))[0]
    hit = _count_bins(idx, nb, weights=hits[finite].astype(np.float64).reshape(-1, 1))[0]
    return {
        "kind": kind,
        "positive_label": None if positive is None else _jsonable(positive),
        "rows": rows.astype(np.int64).tolist(),
        "score_sum": [float(v) for v in score_sum],
        "hits": [int(round(v)) for v in hit],
    }


def _merge_feature(a: dict[str, Any], b: dict[str, Any], top_k: int) -> dict[str, Any]:
    out = dict(a)
    if a["kind"] == KIND_CATEGORICAL:
        counts: Counter[Any] = Counter()
        for f in (a, b):
            for cat, n in zip(f["categories"], f["category_counts"]):
                counts[cat] += n
        ranked = sorted(counts.items(), key=_sort_key)
        out["count"] = a["count"] + b["count"]
        out["missing"] = a["missing"] + b["missing"]
        limit = max(len(a["categories"]), len(b["categories"]))
        complete = a["categories_complete"] and b["categories_complete"]
        kept = ranked if complete else ranked[:limit]
        out["categories"] = [c for c, _ in kept]
        out["category_counts"] = [int(n) for _, n in kept]
        out["categories_complete"] = complete
        out["n_distinct"] = len(ranked) if complete else max(a["n_distinct"], b["n_distinct"], len(ranked))
        top = [int(n) for _, n in ranked[:top_k]]
        out["bin_counts"] = top + [out["count"] - sum(top)]
        return out
    if a["edges"] != b["edges"]:
        raise BaselineMergeError(
            f"feature {a['name']!r}: bin edges differ; fit the parts with Baseline(edges=<one baseline>)")
    na, nb = a["count"], b["count"]
    out["count"] = na + nb
    out["missing"] = a["missing"] + b["missing"]
    if na == 0 or nb == 0:
        src = b if na == 0 else a
        for k in ("mean", "std", "min", "max", "bin_means"):
            out[k] = src[k]
    else:
        m2a = a["std"] ** 2 * na
        m2b = b["std"] ** 2 * nb
        n, mean, m2 = _chan(np.float64(na), np.float64(a["mean"]), np.float64(m2a),
                            np.float64(nb), np.float64(b["mean"]), np.float64(m2b))
        out["mean"] = float(mean)
        out["std"] = math.sqrt(max(float(m2), 0.0) / float(n))
        out["min"] = min(a["min"], b["min"])
        out["max"] = max(a["max"], b["max"])
        means = []
        for ca, cb, ma, mb in zip(a["bin_counts"], b["bin_counts"], a["bin_means"], b["bin_means"]):
            total = ca + cb
            means.append(None if total == 0 else ((ca * ma if ca else 0.0) + (cb * mb if cb else 0.0)) / total)
        out["bin_means"] = means
    out["bin_counts"] = [x + y for x, y in zip(a["bin_counts"], b["bin_counts"])]
    return out


def _merge_classes(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    if a is None or b is None:
        return a or b
    counts: dict[Any, int] = {}
    for d in (a, b):
        for label, n in zip(d["classes"], d["class_counts"]):
            counts[label] = counts.get(label, 0) + n
    ranked = sorted(counts.items(), key=lambda kv: str(kv[0]))
    out = dict(a)
    out["classes"] = [k for k, _ in ranked]
    out["class_counts"] = [n for _, n in ranked]
    return out


def _merge_prediction(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    if a is None or b is None:
        return a or b
    out = dict(a)
    if "score_edges" in a or "score_edges" in b:
        if a.get("score_edges") != b.get("score_edges"):
            raise BaselineMergeError("prediction score edges differ")
        out["score_counts"] = [x + y for x, y in zip(a["score_counts"], b["score_counts"])]
        out["score_missing"] = a.get("score_missing", 0) + b.get("score_missing", 0)
    if "classes" in a or "classes" in b:
        merged = _merge_classes(a if "classes" in a else None, b if "classes" in b else None)
        out.update({"classes": merged["classes"], "class_counts": merged["class_counts"]})
    return out


def _merge_calibration(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    if a is None or b is None:
        return a or b
    if a["kind"] != b["kind"] or a.get("positive_label") != b.get("positive_label"):
        raise BaselineMergeError("calibration tables of different kinds or positive labels")
    out = dict(a)
    for k in ("rows", "score_sum", "hits"):
        out[k] = [x + y for x, y in zip(a[k], b[k])]
    return out


def baseline_path_for(model_path: str | os.PathLike[str]) -> Path:
    """``model.pkl`` -> ``model.baseline.json`` in the same folder."""
    p = Path(model_path)
    return p.with_name(p.stem + ".baseline.json")


def find_baseline(model_path: str | os.PathLike[str] | None = None,
                  override: str | os.PathLike[str] | None = None) -> Baseline | None:
    """The baseline for a model file: ``override`` (e.g. ``OTEL_ML_BASELINE_PATH``) when given, else
    ``<stem>.baseline.json`` next to ``model_path``; None when there is no such file.

    An override that does not exist or does not parse raises (the user asked for that file); a missing
    sibling file is simply no baseline.
    """
    if override:
        return Baseline.load(override)
    if model_path is None:
        return None
    candidate = baseline_path_for(model_path)
    if not candidate.is_file():
        return None
    return Baseline.load(candidate)


__all__ = [
    "Baseline",
    "BaselineMergeError",
    "FORMAT",
    "MODEL_ATTRIBUTE",
    "OTHER",
    "VERSION",
    "baseline_path_for",
    "find_baseline",
    "reduce_scores",
]
