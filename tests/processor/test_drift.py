"""Fleet drift equals the offline computation on the union of the replicas' inputs."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from otel_ml import semconv
from otel_ml.processor import otlp
from otel_ml.processor import testing as t
from otel_ml.processor.drift import FleetDrift

from .conftest import exported

FEATURES = ["age", "income", "tenure"]
N_BINS = 8
SCORE_EDGES = np.asarray(semconv.SCORE_BUCKETS)


def offline_psi(reference: np.ndarray, counts: np.ndarray, eps: float = 1e-4) -> float:
    """Evidently's PSI on binned data, written out independently: empty bins at eps, natural log."""
    p = counts / counts.sum()
    q = reference / reference.sum()
    keep = (p > 0) | (q > 0)
    p, q = np.where(p > 0, p, eps)[keep], np.where(q > 0, q, eps)[keep]
    return float(np.sum((p - q) * np.log(p / q)))


def bins(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin, bins closed on the right like the baseline's and OTel histogram buckets."""
    return np.bincount(np.searchsorted(edges, x, side="left"), minlength=edges.size + 1)


class Fleet:
    """Replicas that bin their inputs against one baseline and export cumulative counters."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        reference = {f: rng.normal(0, 1, 5000) for f in FEATURES}
        self.edges = {f: np.quantile(reference[f], np.linspace(0, 1, N_BINS + 1)[1:-1]) for f in FEATURES}
        self.reference = {f: bins(reference[f], self.edges[f]) / 5000 for f in FEATURES}
        ref_scores = rng.beta(2, 5, 5000)
        self.reference[otlp.SCORE_FEATURE] = bins(ref_scores, SCORE_EDGES) / 5000
        self.rng = rng
        self.union = {f: [] for f in [*FEATURES, otlp.SCORE_FEATURE]}

    def batch(self, n: int, shift: float) -> dict[str, np.ndarray]:
        rows = {f: self.rng.normal(shift * (i + 1), 1 + 0.2 * i, n) for i, f in enumerate(FEATURES)}
        rows[otlp.SCORE_FEATURE] = self.rng.beta(2 + 3 * shift, 5, n)
        for f, x in rows.items():
            self.union[f].append(x)
        return rows

    def counts(self, rows: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        per_feature = {f: bins(rows[f], self.edges[f]) for f in FEATURES}
        return per_feature, bins(rows[otlp.SCORE_FEATURE], SCORE_EDGES)

    def offline(self) -> dict[str, np.ndarray]:
        out = {}
        for f, parts in self.union.items():
            x = np.concatenate(parts)
            out[f] = bins(x, SCORE_EDGES if f == otlp.SCORE_FEATURE else self.edges[f])
        return out


class Replica:
    def __init__(self, fleet: Fleet, instance: str, temporality: int = otlp.CUMULATIVE) -> None:
        self.fleet, self.instance, self.temporality = fleet, instance, temporality
        self.start()

    def start(self) -> None:
        self.start_ns = time.time_ns()
        self.cum = {f: np.zeros(N_BINS, dtype=np.int64) for f in FEATURES}
        self.cum_scores = np.zeros(len(SCORE_EDGES) + 1, dtype=np.int64)

    def serve(self, n: int, shift: float) -> None:
        counts, scores = self.fleet.counts(self.fleet.batch(n, shift))
        self.delta = counts, scores
        for f in FEATURES:
            self.cum[f] = self.cum[f] + counts[f]
        self.cum_scores = self.cum_scores + scores

    def export(self, model: str = "churn", version: str = "3") -> t.metrics_service_pb2.ExportMetricsServiceRequest:
        resource = {"service.name": "churn-api", "service.instance.id": self.instance}
        baseline = {f: self.fleet.reference[f] for f in [*FEATURES, otlp.SCORE_FEATURE]}
        if self.temporality == otlp.DELTA:
            counts, scores = self.delta
            return t.drift_request(resource, model, version, self.start_ns, time.time_ns(), counts=counts,
                                   baseline=baseline, score_counts=scores, temporality=otlp.DELTA)
        return t.drift_request(resource, model, version, self.start_ns, time.time_ns(), counts=self.cum,
                               baseline=baseline, score_counts=self.cum_scores)


def test_fleet_drift_equals_offline_union_with_resets_churn_and_delta(make_processor):
    processor, reader = make_processor(drift_windows=(3600.0,), drift_slot=300.0)
    fleet = Fleet()
    a, b, c = Replica(fleet, "a"), Replica(fleet, "b"), Replica(fleet, "c")
    d = Replica(fleet, "d", temporality=otlp.DELTA)
    send = lambda replica: processor.ingest("metrics", replica.export())  # noqa: E731

    a.serve(400, 0.0)
    b.serve(250, 0.3)
    send(a)
    send(b)
    send(b)  # a retried export: same cumulative values, nothing added
    a.serve(300, 0.1)
    send(a)
    b.start()  # replica b restarts: its counters start again from zero with a new start time
    b.serve(120, 0.5)
    send(b)
    c.serve(500, 0.8)  # replica c comes, exports twice, and goes away
    send(c)
    c.serve(50, 0.8)
    send(c)
    d.serve(200, 0.2)  # a delta-temporality replica
    send(d)
    d.serve(80, 0.2)
    send(d)
    a.serve(10, 0.0)
    send(a)

    snap = processor.compute()
    offline = fleet.offline()
    for f in [*FEATURES, otlp.SCORE_FEATURE]:
        counts = processor.drift.window_counts("churn", "3", f, 3600.0, time.time())
        assert counts.tolist() == offline[f].tolist(), f
        ref = fleet.reference[f]
        assert snap.drift.scores[("churn", "3", f, "psi", 3600.0)] == pytest.approx(offline_psi(ref, offline[f]),
                                                                                   rel=1e-12)
        assert snap.drift.scores[("churn", "3", f, "jensen_shannon", 3600.0)] == pytest.approx(
            jensenshannon(ref, offline[f] / offline[f].sum()), rel=1e-9)
    drifted = [offline_psi(fleet.reference[f], offline[f]) >= 0.1 for f in FEATURES]
    assert snap.drift.shares[("churn", "3", "psi", 3600.0)] == pytest.approx(sum(drifted) / len(FEATURES))
    assert snap.drift.rows[("churn", "3", 3600.0)] == sum(len(x) for x in fleet.union["age"])

    # and the same numbers leave the processor as gauges
    points = exported(reader, semconv.FLEET_DRIFT_SCORE)
    by_key = {(a[semconv.FEATURE_NAME], a[semconv.DRIFT_METHOD], a[semconv.WINDOW]): p.value for a, p in points}
    assert by_key[("income", "psi", "1h")] == pytest.approx(offline_psi(fleet.reference["income"], offline["income"]))
    share = exported(reader, semconv.FLEET_DRIFT_SHARE)
    assert {a[semconv.DRIFT_METHOD] for a, _ in share} == {"psi", "jensen_shannon"}
    assert all(a[semconv.MODEL_NAME] == "churn" and a[semconv.MODEL_VERSION] == "3" for a, _ in points + share)


def test_counts_survive_a_processor_restart(make_processor, tmp_path):
    db = str(tmp_path / "restart.db")
    fleet = Fleet(seed=3)
    a = Replica(fleet, "a")
    processor, _ = make_processor(store_path=db)
    a.serve(300, 0.2)
    processor.ingest("metrics", a.export())
    processor.shutdown()  # checkpoints the drift state
    a.serve(200, 0.4)  # rows binned while the processor was down: the next cumulative point carries them
    again, _ = make_processor(store_path=db)
    a.serve(100, 0.1)
    again.ingest("metrics", a.export())
    offline = fleet.offline()
    assert again.drift.window_counts("churn", "3", "age", 3600.0, time.time()).tolist() == offline["age"].tolist()


def build(points: list[tuple], window: float = 3600.0) -> FleetDrift:
    d = FleetDrift(windows=(window,), slot=60, min_rows=1)
    for stream, start, time_s, value, temporality in points:
        d.add([otlp.BinPoint(semconv.FEATURE_BIN_COUNT, stream, "m", "1", "f", int(start * 1e9), int(time_s * 1e9),
                             temporality, (value,), 0)], now=10_000)
    return d


def test_series_semantics():
    # cumulative: deltas; a decrease is a reset (the new value counts whole); a repeated point adds nothing
    d = build([("s", 9000, 9100, 10, 2), ("s", 9000, 9200, 15, 2), ("s", 9000, 9200, 15, 2),
               ("s", 9000, 9300, 4, 2)])
    assert d.window_counts("m", "1", "f", 3600.0, 10_000).tolist() == [19]
    # a new start time is a reset too
    d = build([("s", 9000, 9100, 10, 2), ("s", 9250, 9300, 3, 2)])
    assert d.window_counts("m", "1", "f", 3600.0, 10_000).tolist() == [13]
    # a series that started before the window: its history cannot be placed, it counts from its next point
    d = build([("s", 100, 9100, 1000, 2), ("s", 100, 9200, 1004, 2)])
    assert d.window_counts("m", "1", "f", 3600.0, 10_000).tolist() == [4]
    # delta points add up as they are
    d = build([("s", 9000, 9100, 5, 1), ("s", 9100, 9200, 6, 1)])
    assert d.window_counts("m", "1", "f", 3600.0, 10_000).tolist() == [11]


def test_points_delivered_out_of_order_count_once():
    # a collector retrying a backlog with several consumers delivers a series' points in any order: an older
    # point (smaller values, earlier timestamp) after a newer one adds nothing, it is not a counter reset
    d = build([("s", 9000, 9100, 10, 2), ("s", 9000, 9300, 30, 2), ("s", 9000, 9200, 20, 2),
               ("s", 9000, 9400, 35, 2)])
    assert d.window_counts("m", "1", "f", 3600.0, 10_000).tolist() == [35]
    # a point of the replica's previous run arriving after its restart (earlier start time) adds nothing
    d = build([("s", 9000, 9100, 10, 2), ("s", 9250, 9300, 3, 2), ("s", 9000, 9200, 12, 2),
               ("s", 9250, 9400, 5, 2)])
    assert d.window_counts("m", "1", "f", 3600.0, 10_000).tolist() == [15]


def test_out_of_order_survives_a_checkpoint(tmp_path):
    from otel_ml.processor.store import Store

    point = lambda t, v: otlp.BinPoint(semconv.FEATURE_BIN_COUNT, "s", "m", "1", "f", int(9000e9), int(t * 1e9),  # noqa: E731
                                       otlp.CUMULATIVE, (v,), 0)
    d = FleetDrift(windows=(3600.0,), slot=60, min_rows=1)
    d.add([point(9100, 10), point(9300, 30)], now=10_000)
    store = Store(str(tmp_path / "s.db"), "normal")
    store.checkpoint_drift(d.dirty_state())
    again = FleetDrift(windows=(3600.0,), slot=60, min_rows=1)
    again.restore(*store.load_drift())
    store.close()
    again.add([point(9200, 20)], now=10_000)  # retried after the restart, older than the checkpoint
    assert again.window_counts("m", "1", "f", 3600.0, 10_000).tolist() == [30]
    # a checkpoint written before time_ns was kept (values as a JSON list) still loads
    old = FleetDrift(windows=(3600.0,), slot=60, min_rows=1)
    old.restore([("s", int(9000e9), "[30]", 10_000.0)], [], [])
    old.add([point(9400, 35)], now=10_000)
    assert old.window_counts("m", "1", "f", 3600.0, 10_000).tolist() == [5]


def test_windows_slide_and_late_points_are_dropped():
    d = FleetDrift(windows=(600.0, 3600.0), slot=60, min_rows=1)
    point = lambda t, v: otlp.BinPoint(semconv.FEATURE_BIN_COUNT, "s", "m", "1", "f", int(9000e9), int(t * 1e9),  # noqa: E731
                                       otlp.CUMULATIVE, (v,), 0)
    d.add([point(9100, 10)], now=9100)
    d.add([point(9700, 25)], now=9700)
    assert d.window_counts("m", "1", "f", 600.0, 9700).tolist() == [15]
    assert d.window_counts("m", "1", "f", 3600.0, 9700).tolist() == [25]
    assert d.add([point(5000, 30)], now=9700) == {"late": 1}
    d.evict(9100 + 3600 + 60)
    assert d.window_counts("m", "1", "f", 3600.0, 9100 + 3600 + 60).tolist() == [15]


def test_min_rows_and_series_limit():
    d = FleetDrift(windows=(3600.0,), slot=60, min_rows=50, max_series=1)
    mk = lambda s, v: otlp.BinPoint(semconv.FEATURE_BIN_COUNT, s, "m", "1", "f", int(9000e9), int(9100e9),  # noqa: E731
                                    otlp.CUMULATIVE, (v,), 0)
    base = otlp.BinPoint(semconv.BASELINE_BIN_FRACTION, "b", "m", "1", "f", 0, int(9100e9), 0, (1.0,), 0)
    assert d.add([base, mk("s1", 10), mk("s2", 10)], now=9100) == {"series_limit": 1}
    assert d.compute(9100).scores == {}  # 10 rows < min_rows
