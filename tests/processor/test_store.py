"""The SQLite store: joins in either order, idempotent by prediction id, restart-safe, bounded."""

from __future__ import annotations

import sqlite3
import time

from otel_ml.processor import otlp
from otel_ml.processor import testing as t
from otel_ml.processor.store import Store

RES = {"service.name": "api", "service.instance.id": "r1"}


def records(*items: dict) -> list[otlp.Record]:
    return otlp.log_records(t.records_request(RES, list(items)))[0]


def joined_pairs(path: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, label, actual FROM predictions WHERE actual IS NOT NULL ORDER BY id").fetchall()


def test_join_in_either_order_and_idempotent(tmp_path):
    store = Store(str(tmp_path / "s.db"))
    now = time.time()
    r = store.add(records(t.prediction("p1", "m", "1", label="1", score=0.8)), now)
    assert (r.predictions, r.joined, r.pending) == (1, 0, 0)
    r = store.add(records(t.outcome("p1", "m", "1", actual=1)), now)  # prediction first
    assert (r.joined, r.pending, r.duplicates) == (1, 0, 0)
    r = store.add(records(t.outcome("p2", "m", "1", actual=0)), now)  # outcome first: waits
    assert (r.joined, r.pending) == (0, 1)
    r = store.add(records(t.prediction("p2", "m", "1", label="0", score=0.1)), now)
    assert (r.predictions, r.joined) == (1, 1) and store.rows_pending == 0
    # retries of everything change nothing
    r = store.add(records(t.prediction("p1", "m", "1", label="1", score=0.8), t.outcome("p1", "m", "1", actual=1),
                          t.outcome("p2", "m", "1", actual=0), t.prediction("p2", "m", "1", label="0")), now)
    assert (r.predictions, r.joined, r.pending, r.duplicates) == (0, 0, 0, 4)
    # a different second outcome for a joined prediction does not replace the first
    store.add(records(t.outcome("p1", "m", "1", actual=0)), now)
    store.close()
    assert joined_pairs(str(tmp_path / "s.db")) == [("p1", '"1"', "1"), ("p2", '"0"', "0")]


def test_outcome_carrying_its_prediction_is_a_pair_on_its_own(tmp_path):
    store = Store(str(tmp_path / "s.db"))
    out = t.outcome("p9", "m", "1", actual=1, time_ns=int(2000e9))
    out["attributes"].update({"ml.prediction.label": "1", "ml.prediction.score": 0.9,
                              "ml.prediction.scores": [0.1, 0.9], "ml.outcome.delay": 500.0})
    r = store.add(records(out), now=2000.0)
    assert (r.predictions, r.joined, r.join_delays) == (0, 1, [500.0])
    r = store.add(records(t.prediction("p9", "m", "1", label="1", score=0.9)), now=2001.0)  # the sampled record
    assert (r.predictions, r.duplicates) == (0, 1)
    (row,) = store.window("m", "1", 0)
    assert row[0] == int(1500e9) and row[5] == "1"


def test_restart_loses_and_double_counts_nothing(tmp_path):
    path = str(tmp_path / "s.db")
    store = Store(path)
    now = time.time()
    store.add(records(*[t.prediction(f"p{i}", "m", "1", label="1") for i in range(100)]), now)
    store.add(records(*[t.outcome(f"p{i}", "m", "1", actual=1) for i in range(0, 60)]), now)
    store.add(records(*[t.outcome(f"q{i}", "m", "1", actual=1) for i in range(10)]), now)  # no prediction yet
    del store  # no close(): as after a crash, only committed transactions count
    again = Store(path)
    assert (again.rows_predictions, again.rows_pending) == (100, 10)
    r = again.add(records(*[t.outcome(f"p{i}", "m", "1", actual=1) for i in range(40, 100)]), now)  # overlap
    assert (r.joined, r.duplicates) == (40, 20)
    r = again.add(records(*[t.prediction(f"q{i}", "m", "1", label="1") for i in range(10)]), now)
    assert r.joined == 10
    again.close()
    assert len(joined_pairs(path)) == 110


def test_eviction_rules(tmp_path):
    store = Store(str(tmp_path / "s.db"))
    now = 1_000_000.0
    old, recent = int((now - 5000) * 1e9), int((now - 10) * 1e9)
    store.add(records(*[t.prediction(f"old{i}", "m", "1", label="1", time_ns=old) for i in range(5)],
                      *[t.prediction(f"new{i}", "m", "1", label="1", time_ns=recent) for i in range(20)]), now - 10)
    store.add(records(t.outcome("lost", "m", "1", actual=1)), now - 4000)  # its prediction never comes
    dropped = store.evict(now, retention=3600, outcome_wait=3000, max_rows=1000)
    assert dropped == {"expired": 5, "unmatched": 1, "evicted": 0}
    dropped = store.evict(now, retention=3600, outcome_wait=3000, max_rows=100)
    assert dropped["evicted"] == 0
    store.add(records(*[t.prediction(f"x{i}", "m", "1", label="1", time_ns=recent + i) for i in range(100)]), now)
    dropped = store.evict(now, retention=3600, outcome_wait=3000, max_rows=100)
    assert dropped["evicted"] == 120 - 90 and store.rows_predictions == 90
    assert not [r for r in store.window("m", "1", 0) if r[0] == recent]  # the oldest went first
