"""Fleet drift: every replica's bin counters, added up per model and window, against the baseline's fractions.

From counters to counts
-----------------------
Each counter series (one replica's ``ml.feature.bin.count`` for one model, feature and bin, or one replica's
``ml.prediction.score`` histogram) is tracked by its stream identity: resource attributes (so
``service.instance.id``), scope, metric name and point attributes. A point turns into a *delta*:

* delta temporality: the value is the delta;
* cumulative, series seen before with the same start time and no bucket smaller than before: value - last;
* cumulative, an older point than the newest one seen (same start time, values smaller, timestamp not
  later; or an earlier start time): nothing. Collectors retry exports from queues with several consumers,
  so after an outage points of one series can arrive out of order; their rows are in the newer point;
* cumulative, start time changed or a value went down (the replica restarted: a counter reset): the whole
  new value, which counts from the new start;
* cumulative, series never seen: the whole value when the series started inside the longest window
  (a replica that just came up, or one the processor had not heard from yet), else nothing (a long-running
  replica seen for the first time: its history cannot be placed in time; it counts from its next point on).

Deltas land in the time slot (``drift.slot``) of the point's timestamp; a window is the sum of its last
``window / slot`` slots. Replicas that go away leave their counts in the slots they filled; their series are
forgotten after ``drift.series_ttl``. So the fleet's counts in a window are the sum, over replicas, of the
rows each replica binned in that window: the counts of the union of their inputs.

From counts to drift
--------------------
Per model, version, feature and window with at least ``drift.min_rows`` rows: the distances of
:mod:`otel_ml.drift` (PSI and Jensen-Shannon distance, the formulas Evidently uses, natural log, empty bins
at 1e-4 in PSI) between the baseline's fractions (``ml.baseline.bin.fraction``, the newest point per bin)
and the window's counts. The dataset drift share is the share of features (the prediction score,
``__prediction_score__``, excluded) whose distance is at or above the method's threshold.

State (series, slot counts, baseline fractions) is checkpointed with :meth:`FleetDrift.dirty_state` into
the processor's store and restored at start, so a restart neither loses nor repeats cumulative counts.

>>> d = FleetDrift(windows=(3600,), slot=300, min_rows=1)
>>> from otel_ml.processor.otlp import BinPoint
>>> base = dict(model="m", version="1", feature="age", start_ns=0, time_ns=10**12)
>>> for b, f in enumerate([0.5, 0.5]):  # the baseline's fractions (a gauge)
...     _ = d.add([BinPoint("ml.baseline.bin.fraction", f"r|b{b}", values=(f,), first_bin=b, temporality=0,
...                         **base)], now=1000)
>>> for b, v in enumerate([30, 70]):  # one replica's cumulative bin counters
...     _ = d.add([BinPoint("ml.feature.bin.count", f"r|c{b}", values=(v,), first_bin=b, temporality=2,
...                         **base)], now=1000)
>>> round(d.compute(1000).scores[("m", "1", "age", "psi", 3600.0)], 4)
0.1695
"""

from __future__ import annotations

import json
import math
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from otel_ml import drift as drift_math
from otel_ml import semconv
from otel_ml.processor.otlp import CUMULATIVE, DELTA, SCORE_FEATURE, BinPoint

METHODS = {"psi": drift_math.psi, "jensen_shannon": drift_math.jensen_shannon}
Key = tuple[str, str, str]  # model, version, feature


@dataclass
class DriftSnapshot:
    """One computation: scores[(model, version, feature, method, window)], shares[(model, version, method,
    window)], rows[(model, version, window)]."""

    scores: dict[tuple, float] = field(default_factory=dict)
    shares: dict[tuple, float] = field(default_factory=dict)
    rows: dict[tuple, int] = field(default_factory=dict)


class _Series:
    __slots__ = ("start_ns", "values", "seen", "time_ns")

    def __init__(self, start_ns: int, values: tuple, seen: float, time_ns: int = 0) -> None:
        self.start_ns, self.values, self.seen = start_ns, values, seen
        self.time_ns = time_ns  # timestamp of the newest point (0: unknown, a checkpoint of an older version)


class FleetDrift:
    """Counter series in, drift scores out. Thread-safe: ``add`` from receivers, ``compute`` from a timer."""

    def __init__(self, windows: tuple[float, ...] = (3600.0,), slot: float = 300.0,
                 methods: tuple[str, ...] = ("psi", "jensen_shannon"), thresholds: dict[str, float] | None = None,
                 min_rows: int = 100, series_ttl: float = 6 * 3600.0, max_series: int = 500_000) -> None:
        self.windows = tuple(sorted(windows))
        self.slot = float(slot)
        self.methods = methods
        self.thresholds = {"psi": 0.1, "jensen_shannon": 0.1, **(thresholds or {})}
        self.min_rows = min_rows
        self.series_ttl = series_ttl
        self.max_series = max_series
        self._slots_per_window = {w: int(round(w / self.slot)) for w in self.windows}
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        self._counts: dict[Key, dict[int, np.ndarray]] = defaultdict(dict)
        self._baseline: dict[Key, dict[int, tuple[float, int]]] = defaultdict(dict)  # bin -> (fraction, time)
        self._dirty_series: set[str] = set()
        self._deleted_series: set[str] = set()
        self._dirty_counts: set[tuple[Key, int]] = set()
        self._deleted_counts: set[tuple[Key, int]] = set()
        self._dirty_baseline: set[Key] = set()

    # -- input ------------------------------------------------------------------------------------------
    def add(self, points: list[BinPoint], now: float) -> dict[str, int]:
        """Fold points into the slots; returns {reason: points dropped} (``late``, ``series_limit``)."""
        dropped: dict[str, int] = {}
        horizon_ns = (now - self.windows[-1]) * 1e9
        oldest_slot = self._slot(now) - self._slots_per_window[self.windows[-1]] + 1
        with self._lock:
            for p in points:
                if p.metric == semconv.BASELINE_BIN_FRACTION:
                    key = (p.model, p.version, p.feature)
                    old = self._baseline[key].get(p.first_bin)
                    if old is None or p.time_ns >= old[1]:
                        self._baseline[key][p.first_bin] = (p.values[0], p.time_ns)
                        self._dirty_baseline.add(key)
                    continue
                delta = self._delta(p, now, horizon_ns)
                if delta is None:
                    dropped["series_limit"] = dropped.get("series_limit", 0) + 1
                    continue
                if not any(delta):
                    continue
                slot = min(self._slot(p.time_ns / 1e9) if p.time_ns else self._slot(now), self._slot(now))
                if slot < oldest_slot:
                    dropped["late"] = dropped.get("late", 0) + 1
                    continue
                key = (p.model, p.version, p.feature)
                slots = self._counts[key]
                arr = slots.get(slot)
                need = p.first_bin + len(delta)
                if arr is None:
                    arr = slots[slot] = np.zeros(need)
                elif arr.size < need:
                    arr = slots[slot] = np.concatenate([arr, np.zeros(need - arr.size)])
                arr[p.first_bin:need] += delta
                self._dirty_counts.add((key, slot))
        return dropped

    def _slot(self, t: float) -> int:
        return int(math.floor(t / self.slot))

    def _delta(self, p: BinPoint, now: float, horizon_ns: float) -> tuple | None:
        values = p.values
        if p.temporality == DELTA:
            return values
        if p.temporality != CUMULATIVE:  # unspecified temporality: not a counter we can use
            return ()
        s = self._series.get(p.stream)
        self._dirty_series.add(p.stream)
        if s is None:
            if len(self._series) >= self.max_series:
                self._dirty_series.discard(p.stream)
                return None
            self._series[p.stream] = _Series(p.start_ns, values, now, p.time_ns)
            self._deleted_series.discard(p.stream)
            return values if p.start_ns >= horizon_ns else ()
        prev = s.values
        s.seen = now
        if p.start_ns == s.start_ns and len(prev) == len(values):
            if all(a >= b for a, b in zip(values, prev)):
                s.values, s.time_ns = values, max(s.time_ns, p.time_ns)
                return tuple(a - b for a, b in zip(values, prev))
            if p.time_ns <= s.time_ns:
                return ()  # an older point delivered late: its rows came with the newer one
        elif p.start_ns < s.start_ns:
            return ()  # a point of the replica's previous run, delivered late: counted before the reset
        s.start_ns, s.values, s.time_ns = p.start_ns, values, p.time_ns
        return values  # reset: everything since the new start

    # -- output -----------------------------------------------------------------------------------------
    def compute(self, now: float) -> DriftSnapshot:
        snap = DriftSnapshot()
        cur = self._slot(now)
        with self._lock:
            keys = list(self._counts)
            window_counts: dict[tuple[Key, float], np.ndarray] = {}
            for key in keys:
                slots = self._counts[key]
                for w in self.windows:
                    lo = cur - self._slots_per_window[w] + 1
                    arrays = [a for s, a in slots.items() if lo <= s <= cur]
                    if not arrays:
                        continue
                    size = max(a.size for a in arrays)
                    total = np.zeros(size)
                    for a in arrays:
                        total[:a.size] += a
                    window_counts[(key, w)] = total
            baseline = {k: dict(v) for k, v in self._baseline.items()}
        drifted: dict[tuple, list[bool]] = defaultdict(list)
        for (key, w), counts in window_counts.items():
            model, version, feature = key
            n = int(round(counts.sum()))
            rows_key = (model, version, w)
            snap.rows[rows_key] = max(snap.rows.get(rows_key, 0), n)
            ref_bins = baseline.get(key)
            if not ref_bins or n < self.min_rows:
                continue
            size = max(counts.size, max(ref_bins) + 1)
            ref = np.zeros(size)
            for b, (fraction, _) in ref_bins.items():
                ref[b] = fraction
            cur_counts = np.zeros(size)
            cur_counts[:counts.size] = counts
            for method in self.methods:
                value = float(METHODS[method](ref, cur_counts))
                if not math.isfinite(value):
                    continue
                snap.scores[(model, version, feature, method, w)] = value
                if feature != SCORE_FEATURE:
                    drifted[(model, version, method, w)].append(value >= self.thresholds[method])
        for k, flags in drifted.items():
            snap.shares[k] = sum(flags) / len(flags)
        return snap

    @property
    def series_count(self) -> int:
        return len(self._series)

    # -- housekeeping -----------------------------------------------------------------------------------
    def evict(self, now: float) -> None:
        """Forget slots older than the longest window, and series silent for ``series_ttl``."""
        oldest = self._slot(now) - self._slots_per_window[self.windows[-1]] + 1
        with self._lock:
            for key in list(self._counts):
                slots = self._counts[key]
                for s in [s for s in slots if s < oldest]:
                    del slots[s]
                    self._deleted_counts.add((key, s))
                    self._dirty_counts.discard((key, s))
                if not slots:
                    del self._counts[key]
            stale = [k for k, s in self._series.items() if now - s.seen > self.series_ttl]
            for k in stale:
                del self._series[k]
                self._deleted_series.add(k)
                self._dirty_series.discard(k)

    def dirty_state(self) -> dict[str, list]:
        """What changed since the last call, for the store's checkpoint (consistent: taken under the lock)."""
        with self._lock:
            out = {
                "series": [(k, s.start_ns, json.dumps({"values": list(s.values), "time_ns": s.time_ns}), s.seen)
                           for k in self._dirty_series if (s := self._series.get(k)) is not None],
                "series_deleted": list(self._deleted_series),
                "counts": [(k[0], k[1], k[2], slot, json.dumps(self._counts[k][slot].tolist()))
                           for k, slot in self._dirty_counts if slot in self._counts.get(k, {})],
                "counts_deleted": [(k[0], k[1], k[2], slot) for k, slot in self._deleted_counts],
                "baseline": [(k[0], k[1], k[2], json.dumps({str(b): v for b, v in self._baseline[k].items()}))
                             for k in self._dirty_baseline],
            }
            self._dirty_series.clear()
            self._deleted_series.clear()
            self._dirty_counts.clear()
            self._deleted_counts.clear()
            self._dirty_baseline.clear()
        return out

    def restore(self, series: list[tuple], counts: list[tuple], baseline: list[tuple]) -> None:
        """Load a checkpoint (rows as written from :meth:`dirty_state`)."""
        with self._lock:
            for stream, start_ns, values, seen in series:
                state = json.loads(values)  # {"values": [...], "time_ns": t}; a plain list before time_ns was kept
                if isinstance(state, list):
                    state = {"values": state, "time_ns": 0}
                self._series[stream] = _Series(int(start_ns), tuple(state["values"]), float(seen),
                                               int(state["time_ns"]))
            for model, version, feature, slot, values in counts:
                self._counts[(model, version, feature)][int(slot)] = np.asarray(json.loads(values), dtype=float)
            for model, version, feature, bins in baseline:
                self._baseline[(model, version, feature)] = {int(b): tuple(v) for b, v in json.loads(bins).items()}

    def models(self) -> set[tuple[str, str]]:
        with self._lock:
            return {(k[0], k[1]) for k in self._counts} | {(k[0], k[1]) for k in self._baseline}

    def window_counts(self, model: str, version: str, feature: str, window: float, now: float) -> Any:
        """The fleet's counts of one feature in one window (for tests and ``/status``)."""
        cur = self._slot(now)
        lo = cur - self._slots_per_window[window] + 1
        with self._lock:
            arrays = [a for s, a in self._counts.get((model, version, feature), {}).items() if lo <= s <= cur]
        if not arrays:
            return np.zeros(0)
        out = np.zeros(max(a.size for a in arrays))
        for a in arrays:
            out[:a.size] += a
        return out
