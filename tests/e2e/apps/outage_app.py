"""Outage app: serves single-row predictions in a paced loop and reports its latency and memory every second.

Run under ``opentelemetry-instrument``. A pipeline (StandardScaler + LogisticRegression) answers
``OUTAGE_RATE`` calls per second (default 100) to ``predict_proba`` with one row; every ``OUTAGE_ERROR_EVERY``-th
call (default 50) is a failing call (wrong number of features), so error traces, which the gateway always keeps,
show up in Jaeger throughout. The loop runs until a line ``stop`` (or end of file) arrives on stdin, or for at
most ``OUTAGE_MAX_SECONDS`` (default 180).

stdout, one JSON object per line (``kind`` says which):

* ``start``: the pid;
* ``window``: every second: wall time ``t`` (end of window), successful calls ``n`` in it, their latency
  ``p50_ms``, ``p90_ms``, ``max_ms`` (the model call alone, measured around ``predict_proba``), ``slow`` (calls
  over ``SLOW_MS``) and ``rss_kb``;
* ``end``: totals: successful calls and rows, failed calls, seconds.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

SLOW_MS = 10.0  # a model call slower than this counts as slow in the report

def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _emit(kind: str, **fields) -> None:
    print(json.dumps({"kind": kind, **fields}), flush=True)


def main() -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rate = float(os.environ.get("OUTAGE_RATE", "100"))
    error_every = int(os.environ.get("OUTAGE_ERROR_EVERY", "50"))
    max_seconds = float(os.environ.get("OUTAGE_MAX_SECONDS", "180"))

    rng = np.random.default_rng(3)
    X = rng.normal(size=(1000, 8))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    rows = rng.normal(size=(1000, 1, 8))
    bad = np.zeros((1, 3))

    stop = threading.Event()

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    _emit("start", pid=os.getpid())

    interval = 1.0 / rate
    started = time.monotonic()
    next_call = window_start = started
    latencies: list[float] = []
    ok = failed = i = 0
    while not stop.is_set() and time.monotonic() - started < max_seconds:
        i += 1
        if error_every and i % error_every == 0:
            try:
                model.predict_proba(bad)
            except ValueError:
                failed += 1
        else:
            t0 = time.perf_counter()
            model.predict_proba(rows[i % len(rows)])
            latencies.append(time.perf_counter() - t0)
            ok += 1
        now = time.monotonic()
        if now - window_start >= 1.0:
            ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
            _emit("window", t=time.time(), n=len(latencies), p50_ms=float(np.percentile(ms, 50)),
                  p90_ms=float(np.percentile(ms, 90)), max_ms=float(ms.max()), slow=int((ms > SLOW_MS).sum()),
                  rss_kb=_rss_kb())
            latencies, window_start = [], now
        next_call += interval
        delay = next_call - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_call = time.monotonic()  # behind schedule: do not burst to catch up
    _emit("end", calls=ok, rows=ok, failed=failed, seconds=time.monotonic() - started)


if __name__ == "__main__":
    main()
