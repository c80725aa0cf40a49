"""Drift for all columns: otel-ml with a precomputed baseline vs a plain numpy PSI vs Evidently's report.

Data: 100,000 x 20 numeric reference and current (four distribution families), 5 current columns shifted
(mean +0.5 std, scale x1.5, ...). Contenders, on the same data in one run:

* ``otel-ml``: ``Baseline.bin_counts(current)`` + ``drift_report`` (PSI, Jensen-Shannon, normalised
  Wasserstein, binned KS with p-values, chi-square, drift share) with the baseline fitted beforehand;
* ``numpy PSI``: the lower bound of the issue, PSI only over 10 reference-quantile bins whose edges and
  reference fractions are precomputed: ``searchsorted`` + ``bincount`` + the PSI sum, column by column;
* ``Evidently``: ``Report([DataDriftPreset()]).run(current, reference)`` (its default: normalised
  Wasserstein for numeric columns of more than 1000 rows), run in the interpreter given by
  ``--peer-python`` (default ``/tmp/venv-peers/bin/python``) when Evidently is not importable here.

otel-ml and numpy are timed interleaved in this process (median of ``--repeats``); peak memory is measured
in a fresh subprocess per contender: tracemalloc peak of the timed call, and peak RSS (ru_maxrss) above
the RSS after the data is loaded. Raw results go to ``benchmarks/results/drift.json`` and ``drift.md``.

    python benchmarks/bench_drift.py [--repeats 7] [--peer-python PATH] [--skip-evidently]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
N_ROWS, N_COLS, N_SHIFTED = 100_000, 20, 5


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)

    def draw(n: int, shift: bool) -> np.ndarray:
        cols = []
        for j in range(N_COLS):
            family = j % 4
            if family == 0:
                c = rng.normal(0, 1, n)
            elif family == 1:
                c = rng.lognormal(0, 0.5, n)
            elif family == 2:
                c = rng.uniform(0, 10, n)
            else:
                c = rng.gamma(2.0, 2.0, n)
            if shift and j < N_SHIFTED:
                c = c + 0.5 * c.std() if j % 2 == 0 else (c - c.mean()) * 1.5 + c.mean()
            cols.append(c)
        return np.column_stack(cols)

    return draw(N_ROWS, False), draw(N_ROWS, True)


# ----------------------------------------------------------------------------------------------------
def numpy_psi_prepare(ref: np.ndarray, n_bins: int = 10) -> tuple[list[np.ndarray], list[np.ndarray]]:
    edges, fractions = [], []
    for j in range(ref.shape[1]):
        e = np.quantile(ref[:, j], np.linspace(0, 1, n_bins + 1)[1:-1])
        edges.append(e)
        fractions.append(np.bincount(np.searchsorted(e, ref[:, j]), minlength=n_bins) / ref.shape[0])
    return edges, fractions


def numpy_psi(cur: np.ndarray, edges: list[np.ndarray], fractions: list[np.ndarray]) -> np.ndarray:
    out = np.empty(cur.shape[1])
    for j in range(cur.shape[1]):
        p = np.bincount(np.searchsorted(edges[j], cur[:, j]), minlength=len(edges[j]) + 1) / cur.shape[0]
        q = fractions[j]
        p = np.where(p == 0, 1e-4, p)
        q = np.where(q == 0, 1e-4, q)
        out[j] = np.sum((p - q) * np.log(p / q))
    return out


def ours_prepare(ref: np.ndarray):
    sys.path.insert(0, str(ROOT))
    from otel_ml.baseline import Baseline

    return Baseline(n_bins=10).fit(ref)


def ours(cur: np.ndarray, baseline):
    from otel_ml.drift import drift_report
    from otel_ml.frame import as_table

    return drift_report(baseline, baseline.bin_counts(as_table(cur)), n_rows=cur.shape[0])


def evidently_run(ref: np.ndarray, cur: np.ndarray):
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    names = [f"x{j}" for j in range(ref.shape[1])]
    return Report([DataDriftPreset()]).run(current_data=pd.DataFrame(cur, columns=names),
                                           reference_data=pd.DataFrame(ref, columns=names))


def evidently_drifted(snapshot) -> list[str]:
    out = []
    for m in snapshot.dict()["metrics"]:
        name = m["metric_name"]
        if name.startswith("ValueDrift(") and float(m["value"]) >= 0.1:
            out.append(name.split("column=")[1].split(",")[0])
    return out


# ----------------------------------------------------------------------------------------------------
def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(kind: str, data_path: str, repeats: int) -> dict:
    """Run one contender in this (fresh) process: times, tracemalloc peak, peak RSS above loaded data."""
    z = np.load(data_path)
    ref, cur = z["ref"], z["cur"]
    if kind == "otel-ml":
        state = ours_prepare(ref)
        fn = lambda: ours(cur, state)  # noqa: E731
    elif kind == "numpy-psi":
        state = numpy_psi_prepare(ref)
        fn = lambda: numpy_psi(cur, *state)  # noqa: E731
    else:
        import evidently  # noqa: F401  (import cost is not counted)
        from evidently.presets import DataDriftPreset  # noqa: F401

        fn = lambda: evidently_run(ref, cur)  # noqa: E731
    import scipy.stats  # noqa: F401  (imported by otel-ml's p-values and by Evidently: not counted)

    rss_loaded = _maxrss_mb()  # data loaded, state prepared, libraries imported
    fn()  # warm-up (caches)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    rss_peak = _maxrss_mb()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out = {"kind": kind, "times_s": times, "median_s": statistics.median(times),
           "tracemalloc_peak_mb": peak / 2**20, "rss_before_mb": rss_loaded, "rss_peak_mb": rss_peak}
    if kind == "evidently":
        out["drifted"] = evidently_drifted(result)
    elif kind == "otel-ml":
        out["drifted"] = result.drifted_features
    else:
        out["drifted"] = [f"x{j}" for j in np.flatnonzero(result > 0.1)]
    return out


def run_worker(python: str, kind: str, data_path: str, repeats: int) -> dict:
    proc = subprocess.run([python, __file__, "--worker", kind, "--data", data_path, "--repeats", str(repeats)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--evidently-repeats", type=int, default=3)
    ap.add_argument("--peer-python", default="/tmp/venv-peers/bin/python")
    ap.add_argument("--skip-evidently", action="store_true")
    ap.add_argument("--worker")
    ap.add_argument("--data")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.repeats)))
        return

    ref, cur = make_data()
    # side by side in this process: interleaved repeats, medians
    baseline = ours_prepare(ref)
    t = time.perf_counter()
    baseline = ours_prepare(ref)
    fit_s = time.perf_counter() - t
    edges, fractions = numpy_psi_prepare(ref)
    ours(cur, baseline)
    numpy_psi(cur, edges, fractions)
    t_ours, t_np = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        report = ours(cur, baseline)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        psi_np = numpy_psi(cur, edges, fractions)
        t_np.append(time.perf_counter() - t)
    our_psi = report.scores["psi"]

    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.join(tmp, "data.npz")
        np.savez(data_path, ref=ref, cur=cur)
        mem = {k: run_worker(sys.executable, k, data_path, 3) for k in ("otel-ml", "numpy-psi")}
        ev = None
        if not args.skip_evidently:
            try:
                import evidently  # noqa: F401

                python = sys.executable
            except ImportError:
                python = args.peer_python
            ev = run_worker(python, "evidently", data_path, args.evidently_repeats)
            ev["python"] = python

    med_ours, med_np = statistics.median(t_ours), statistics.median(t_np)
    result = {
        "data": {"rows": N_ROWS, "columns": N_COLS, "shifted_columns": N_SHIFTED},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                    "loadavg_at_end": os.getloadavg()},
        "baseline_fit_s": fit_s,
        "otel_ml": {"median_s": med_ours, "times_s": t_ours, "drifted": report.drifted_features,
                    "methods": list(report.scores), "memory": mem["otel-ml"]},
        "numpy_psi": {"median_s": med_np, "times_s": t_np, "memory": mem["numpy-psi"]},
        "psi_max_abs_difference_ours_vs_numpy": float(np.max(np.abs(our_psi - psi_np))),
        "ratio_ours_to_numpy": med_ours / med_np,
    }
    if ev is not None:
        result["evidently"] = ev
        result["speedup_vs_evidently"] = ev["median_s"] / med_ours
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "drift.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Drift benchmark (raw)",
        "",
        f"{N_ROWS:,} x {N_COLS} numeric reference vs current, {N_SHIFTED} shifted columns; "
        f"{os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.1f}.",
        "",
        "| contender | median time | tracemalloc peak | peak RSS | RSS before the runs | drifted columns |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        f"| otel-ml (all methods, precomputed baseline) | {med_ours * 1e3:.1f} ms | "
        f"{mem['otel-ml']['tracemalloc_peak_mb']:.1f} MB | {mem['otel-ml']['rss_peak_mb']:.0f} MB | "
        f"{mem['otel-ml']['rss_before_mb']:.0f} MB | {', '.join(report.drifted_features)} |",
        f"| numpy PSI, 10 precomputed quantile bins | {med_np * 1e3:.1f} ms | "
        f"{mem['numpy-psi']['tracemalloc_peak_mb']:.1f} MB | {mem['numpy-psi']['rss_peak_mb']:.0f} MB | "
        f"{mem['numpy-psi']['rss_before_mb']:.0f} MB | {', '.join(mem['numpy-psi']['drifted'])} |",
    ]
    if ev is not None:
        lines.append(f"| Evidently DataDriftPreset | {ev['median_s'] * 1e3:.0f} ms | "
                     f"{ev['tracemalloc_peak_mb']:.1f} MB | {ev['rss_peak_mb']:.0f} MB | "
                     f"{ev['rss_before_mb']:.0f} MB | {', '.join(ev['drifted'])} |")
    lines += ["", f"otel-ml / numpy PSI: {med_ours / med_np:.2f}x; baseline fit (not in the drift time): "
              f"{fit_s * 1e3:.0f} ms; largest PSI difference otel-ml vs numpy: "
              f"{result['psi_max_abs_difference_ours_vs_numpy']:.1e}"]
    if ev is not None:
        lines.append(f"Evidently / otel-ml: {ev['median_s'] / med_ours:.0f}x")
    (RESULTS / "drift.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
