"""The processor's embedded store: SQLite in WAL mode, one writer, transactions per request.

Tables
------
``predictions``       one row per prediction id (primary key): model, version, prediction time, label, score,
                      per-class scores and their class names; ``actual``, ``outcome_ts`` and ``joined_at``
                      once its outcome is joined. An outcome record that carries its prediction (label,
                      scores, ``ml.outcome.delay``) creates the row, already joined, when no prediction
                      record came; a prediction record arriving later for it is then a duplicate.
``pending_outcomes``  outcomes whose prediction has not arrived (yet), by prediction id.
``drift_*``           the fleet-drift checkpoint (counter series, slot counts, baseline fractions).

Joining is idempotent by prediction id: an outcome updates its prediction only while ``actual IS NULL``;
a repeated prediction or outcome (a retry, a replayed batch) changes nothing. Everything a request brings is
written in one transaction, committed before the request is acknowledged, so a crash or restart loses no
acknowledged record and counts none twice (``synchronous=normal`` is safe against a process crash, ``full``
also against power loss).

Eviction (:meth:`Store.evict`, run by the processor every compute interval), in this order:

1. predictions older than the retention (``max(performance.horizon, longest performance window)``),
   joined or not: past the horizon no outcome is expected, past the windows no metric reads them;
2. outcomes that waited longer than ``performance.outcome_wait`` for their prediction;
3. above ``store.max_rows`` (predictions + waiting outcomes): the oldest predictions, then the oldest
   waiting outcomes, down to 90 % of the limit. The store can exceed the limit by what arrives within one
   compute interval.

Each eviction is counted in ``ml.processor.dropped`` with reason ``expired``, ``unmatched`` or ``evicted``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from array import array
from dataclasses import dataclass, field
from typing import Any

from otel_ml.processor.otlp import Record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    ts INTEGER NOT NULL,
    label TEXT,
    score REAL,
    scores BLOB,
    classes TEXT,
    mtype TEXT,
    actual TEXT,
    outcome_ts INTEGER,
    joined_at REAL
);
CREATE INDEX IF NOT EXISTS predictions_by_model_time ON predictions (model, version, ts);
CREATE TABLE IF NOT EXISTS pending_outcomes (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    actual TEXT NOT NULL,
    ts INTEGER NOT NULL,
    received REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS drift_series (stream TEXT PRIMARY KEY, start_ns INTEGER, vals TEXT, seen REAL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS drift_counts (
    model TEXT, version TEXT, feature TEXT, slot INTEGER, vals TEXT,
    PRIMARY KEY (model, version, feature, slot)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS drift_baseline (
    model TEXT, version TEXT, feature TEXT, bins TEXT,
    PRIMARY KEY (model, version, feature)
) WITHOUT ROWID;
"""
_CHUNK = 500  # ids per IN (...) query
WAL_AUTOCHECKPOINT_PAGES = 16_384  # 4 KiB pages: 64 MiB


@dataclass
class AddResult:
    predictions: int = 0  # new predictions stored
    joined: int = 0  # outcomes joined to their prediction (either order)
    pending: int = 0  # outcomes stored to wait for their prediction
    duplicates: int = 0  # predictions or outcomes already known (retries): ignored
    join_delays: list[float] = field(default_factory=list)  # seconds, prediction time -> joined
    changed: set[tuple[str, str]] = field(default_factory=set)  # (model, version) with new data


def _label(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), default=str)


def _scores(scores: list | None) -> bytes | None:
    return array("d", scores).tobytes() if scores is not None else None


class Store:
    """SQLite store of predictions and outcomes. ``add`` is safe to call from several threads."""

    def __init__(self, path: str = ":memory:", synchronous: str = "normal") -> None:
        self.path = path
        uri = path == ":memory:"
        target = f"file:otel-ml-processor-{uuid.uuid4().hex}?mode=memory&cache=shared" if uri else path
        if not uri:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._conn = sqlite3.connect(target, uri=uri, check_same_thread=False, isolation_level=None)
        self._keepalive = self._conn
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._conn.execute("PRAGMA busy_timeout=10000")
        # WAL checkpoints run from the compute thread (checkpoint_wal), not inside a request's commit; the
        # writer checkpoints by itself only past 64 MB of WAL, and the WAL file is truncated back to 64 MB.
        self._conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        self._conn.execute(f"PRAGMA journal_size_limit={WAL_AUTOCHECKPOINT_PAGES * 4096}")
        self._conn.executescript(_SCHEMA)
        self._reader = sqlite3.connect(target, uri=uri, check_same_thread=False, isolation_level=None)
        self._reader.execute("PRAGMA busy_timeout=10000")
        if uri:
            self._reader.execute("PRAGMA read_uncommitted=1")
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self.rows_predictions = self._conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        self.rows_pending = self._conn.execute("SELECT COUNT(*) FROM pending_outcomes").fetchone()[0]

    # -- writes -------------------------------------------------------------------------------------------
    def add(self, records: list[Record], now: float) -> AddResult:
        """Store a request's records in one transaction and join what can be joined."""
        result = AddResult()
        predictions = [r for r in records if r.kind == "prediction"]
        outcomes = [r for r in records if r.kind != "prediction"]
        interned: dict[tuple, str] = {}
        labels: dict[Any, str | None] = {}
        pred_rows = []
        for r in predictions:
            label = labels.get(r.label, labels) if r.label.__hash__ is not None else labels
            if label is labels:
                label = _label(r.label)
                if r.label.__hash__ is not None:
                    labels[r.label] = label
            pred_rows.append((r.id, r.model, r.version, r.time_ns, label, r.score, _scores(r.scores),
                              self._classes(r.class_names, interned), r.model_type))
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if pred_rows:
                    before = conn.total_changes
                    conn.executemany("INSERT OR IGNORE INTO predictions (id, model, version, ts, label, score, "
                                     "scores, classes, mtype) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", pred_rows)
                    inserted = conn.total_changes - before
                    result.predictions += inserted
                    result.duplicates += len(pred_rows) - inserted
                    self.rows_predictions += inserted
                    result.changed.update((r.model, r.version) for r in predictions)
                    if self.rows_pending:
                        self._join_waiting([r.id for r in predictions], now, result)
                for r in outcomes:
                    self._add_outcome(r, now, result)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return result

    @staticmethod
    def _classes(names: list | None, interned: dict[tuple, str]) -> str | None:
        if names is None:
            return None
        key = tuple(names)
        text = interned.get(key)
        if text is None:
            text = interned[key] = json.dumps(names, separators=(",", ":"), default=str)
        return text

    def _join_waiting(self, ids: list[str], now: float, result: AddResult) -> None:
        conn = self._conn
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i:i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            waiting = conn.execute(f"SELECT id, actual, ts FROM pending_outcomes WHERE id IN ({marks})",
                                   chunk).fetchall()
            for pid, actual, ts in waiting:
                row = conn.execute("UPDATE predictions SET actual = ?, outcome_ts = ?, joined_at = ? "
                                   "WHERE id = ? AND actual IS NULL RETURNING ts, model, version",
                                   (actual, ts, now, pid)).fetchone()
                conn.execute("DELETE FROM pending_outcomes WHERE id = ?", (pid,))
                self.rows_pending -= 1
                if row is not None:
                    result.joined += 1
                    result.join_delays.append(max(0.0, now - row[0] / 1e9))
                    result.changed.add((row[1], row[2]))

    def _add_outcome(self, r: Record, now: float, result: AddResult) -> None:
        conn = self._conn
        actual = _label(r.actual)
        row = conn.execute("UPDATE predictions SET actual = ?, outcome_ts = ?, joined_at = ? "
                           "WHERE id = ? AND actual IS NULL RETURNING ts, model, version",
                           (actual, r.time_ns, now, r.id)).fetchone()
        if row is not None:
            result.joined += 1
            result.join_delays.append(max(0.0, now - row[0] / 1e9))
            result.changed.add((row[1], row[2]))
            return
        if conn.execute("SELECT 1 FROM predictions WHERE id = ?", (r.id,)).fetchone() is not None:
            result.duplicates += 1  # already joined: a retried or repeated outcome (the first one wins)
            return
        if r.has_prediction:  # the outcome carries its prediction: a complete pair on its own
            delay = r.delay if r.delay is not None else 0.0
            ts = r.time_ns - int(delay * 1e9)
            conn.execute("INSERT INTO predictions (id, model, version, ts, label, score, scores, classes, mtype, "
                         "actual, outcome_ts, joined_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (r.id, r.model, r.version, ts, _label(r.label), r.score, _scores(r.scores),
                          self._classes(r.class_names, {}), r.model_type, actual, r.time_ns, now))
            self.rows_predictions += 1
            result.joined += 1
            result.join_delays.append(max(0.0, now - ts / 1e9))
            result.changed.add((r.model, r.version))
            return
        cur = conn.execute("INSERT OR IGNORE INTO pending_outcomes (id, model, version, actual, ts, received) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (r.id, r.model, r.version, actual, r.time_ns, now))
        if cur.rowcount == 1:
            result.pending += 1
            self.rows_pending += 1
        else:
            result.duplicates += 1

    def evict(self, now: float, retention: float, outcome_wait: float, max_rows: int) -> dict[str, int]:
        """Apply the eviction rules of the module docstring; returns {reason: rows removed}."""
        dropped = {"expired": 0, "unmatched": 0, "evicted": 0}
        cutoff_ns = int((now - retention) * 1e9)
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for model, version in conn.execute("SELECT DISTINCT model, version FROM predictions").fetchall():
                    n = conn.execute("DELETE FROM predictions WHERE model = ? AND version = ? AND ts < ?",
                                     (model, version, cutoff_ns)).rowcount
                    dropped["expired"] += n
                dropped["unmatched"] = conn.execute("DELETE FROM pending_outcomes WHERE received < ?",
                                                    (now - outcome_wait,)).rowcount
                self.rows_predictions -= dropped["expired"]
                self.rows_pending -= dropped["unmatched"]
                if self.rows_predictions + self.rows_pending > max_rows:
                    excess = self.rows_predictions + self.rows_pending - int(max_rows * 0.9)
                    n = conn.execute("DELETE FROM predictions WHERE id IN "
                                     "(SELECT id FROM predictions ORDER BY ts LIMIT ?)", (excess,)).rowcount
                    self.rows_predictions -= n
                    m = 0
                    if excess > n:
                        m = conn.execute("DELETE FROM pending_outcomes WHERE id IN "
                                         "(SELECT id FROM pending_outcomes ORDER BY received LIMIT ?)",
                                         (excess - n,)).rowcount
                        self.rows_pending -= m
                    dropped["evicted"] = n + m
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return dropped

    def checkpoint_wal(self) -> None:
        """Copy the WAL back into the database without blocking writers (PASSIVE), off the request path."""
        if self.path == ":memory:":
            return
        with self._read_lock:
            self._reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    # -- reads --------------------------------------------------------------------------------------------
    def models(self) -> list[tuple[str, str]]:
        with self._read_lock:
            return [tuple(r) for r in self._reader.execute("SELECT DISTINCT model, version FROM predictions")]

    def window(self, model: str, version: str, since_ns: int) -> list[tuple]:
        """Predictions of a model version since ``since_ns``: (ts, label, score, scores, mtype, actual, classes)."""
        with self._read_lock:
            return self._reader.execute(
                "SELECT ts, label, score, scores, mtype, actual, classes FROM predictions "
                "WHERE model = ? AND version = ? AND ts >= ?", (model, version, since_ns)).fetchall()

    def size_bytes(self) -> int:
        if self.path == ":memory:":
            with self._read_lock:
                pages = self._reader.execute("PRAGMA page_count").fetchone()[0]
                size = self._reader.execute("PRAGMA page_size").fetchone()[0]
            return pages * size
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))


    # -- drift checkpoint ---------------------------------------------------------------------------------
    def checkpoint_drift(self, state: dict[str, list]) -> None:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO drift_series VALUES (?, ?, ?, ?)", state["series"])
                conn.executemany("DELETE FROM drift_series WHERE stream = ?", [(s,) for s in state["series_deleted"]])
                conn.executemany("INSERT OR REPLACE INTO drift_counts VALUES (?, ?, ?, ?, ?)", state["counts"])
                conn.executemany("DELETE FROM drift_counts WHERE model = ? AND version = ? AND feature = ? "
                                 "AND slot = ?", state["counts_deleted"])
                conn.executemany("INSERT OR REPLACE INTO drift_baseline VALUES (?, ?, ?, ?)", state["baseline"])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def load_drift(self) -> tuple[list, list, list]:
        with self._read_lock:
            r = self._reader
            return (r.execute("SELECT * FROM drift_series").fetchall(),
                    r.execute("SELECT * FROM drift_counts").fetchall(),
                    r.execute("SELECT * FROM drift_baseline").fetchall())

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._conn.close()
