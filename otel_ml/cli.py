"""The ``otel-ml`` command: make a baseline from a data file, or compare a data file with a baseline.

Usage::

    otel-ml baseline train.csv -o model.baseline.json --target churned --score-column score
    otel-ml drift model.baseline.json last_week.parquet

``otel-ml baseline DATA -o OUT`` reads CSV or Parquet in chunks (``--chunk-rows``), with a progress bar on
a terminal when the file has more than one chunk. A file of one chunk is fitted directly. A larger file is
read twice: the first pass keeps a uniform random sample of ``--sample-size`` rows (the smallest of
random keys, so the sample does not depend on the chunking) from which the column kinds, the quantile edges
and the score bins are decided; the second pass fits every chunk on those edges and merges the parts, so
counts, moments and category counts are exact over the whole file.

Options of ``baseline``: ``--target COL`` (labels: class counts and, with scores, calibration),
``--score-column COL`` (prediction scores), ``--prediction-column COL`` (predicted labels), ``--bins N``,
``--top-k K``, ``--exclude COL ...``, ``--chunk-rows N``, ``--sample-size N``.

``otel-ml drift BASELINE DATA`` counts the file's values into the baseline's bins and prints one line per
feature (PSI, Jensen-Shannon, normalised Wasserstein, KS, p-value, drifted) and the dataset's drift share;
``--format json`` prints the report as JSON, ``--fail-on-drift`` exits with 1 when the dataset drifted.
Thresholds: ``--psi``, ``--js``, ``--wasserstein`` (default 0.1 each), ``--share`` (0.5).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from otel_ml.baseline import Baseline
from otel_ml.drift import Thresholds, drift_report
from otel_ml.frame import as_table

DEFAULT_CHUNK_ROWS = 200_000


# ----------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------
def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def count_rows(path: Path) -> int:
    """Data rows in a CSV (lines after the header) or a Parquet file (from its metadata)."""
    if _is_parquet(path):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)


def read_chunks(path: Path, chunk_rows: int, columns: list[str] | None = None) -> Iterator[Any]:
    """DataFrames of at most ``chunk_rows`` rows from a CSV or Parquet file."""
    import pandas as pd

    if _is_parquet(path):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
            yield batch.to_pandas()
        return
    yield from pd.read_csv(path, chunksize=chunk_rows, usecols=columns)


def _progress(total: int, chunk_rows: int, desc: str) -> Any:
    from tqdm import tqdm

    # a bar only on large inputs, and only on a terminal (disable=None)
    return tqdm(total=total, unit="rows", unit_scale=True, desc=desc, file=sys.stderr,
                disable=None if total > chunk_rows else True)


# ----------------------------------------------------------------------------------------------------
# baseline
# ----------------------------------------------------------------------------------------------------
def _split(chunk: Any, args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """Features, labels, scores and predicted labels of one chunk."""
    special = [c for c in (args.target, args.score_column, args.prediction_column) if c]
    missing = [c for c in special if c not in chunk.columns]
    if missing:
        raise SystemExit(f"otel-ml: column {missing[0]!r} is not in the data (columns: {list(chunk.columns)})")
    y = chunk[args.target].to_numpy() if args.target else None
    scores = chunk[args.score_column].to_numpy(dtype=np.float64) if args.score_column else None
    preds = chunk[args.prediction_column].to_numpy() if args.prediction_column else None
    drop = [c for c in special + list(args.exclude or []) if c in chunk.columns]
    return chunk.drop(columns=drop), y, scores, preds


def _coerce(X: Any, kinds: dict[str, str]) -> Any:
    """Give every chunk the column kinds decided on the sample, so that chunk baselines merge."""
    import pandas as pd

    out = {}
    for name in X.columns:
        kind = kinds.get(name)
        col = X[name]
        if kind == "numeric":
            out[name] = pd.to_numeric(col, errors="coerce").astype("float64")
        elif kind == "boolean":
            out[name] = col.astype("boolean")
        else:
            out[name] = col.astype(object)
    return pd.DataFrame(out, index=X.index)


def _sample(path: Path, args: argparse.Namespace, total: int) -> Any:
    """Uniform random sample of ``args.sample_size`` rows: the rows with the smallest random keys."""
    import pandas as pd

    rng = np.random.default_rng(args.seed)
    kept = None
    with _progress(total, args.chunk_rows, "sampling") as bar:
        for chunk in read_chunks(path, args.chunk_rows):
            chunk = chunk.reset_index(drop=True)
            chunk["__key__"] = rng.random(len(chunk))
            kept = chunk if kept is None else pd.concat([kept, chunk], ignore_index=True)
            if len(kept) > args.sample_size:
                kept = kept.nsmallest(args.sample_size, "__key__")
            bar.update(len(chunk))
    return kept.drop(columns="__key__").reset_index(drop=True)


def build_baseline(path: Path, args: argparse.Namespace) -> Baseline:
    total = count_rows(path)
    params = {"n_bins": args.bins, "top_k": args.top_k, "sample_size": args.sample_size}
    if total <= args.chunk_rows:
        chunk = next(iter(read_chunks(path, max(args.chunk_rows, 1))))
        X, y, scores, preds = _split(chunk, args)
        return Baseline(**params).fit(X, y=y, scores=scores, predictions=preds)
    sample = _sample(path, args, total)
    X, y, scores, preds = _split(sample, args)
    table = as_table(X)
    kinds = dict(zip(table.names, table.kinds))
    shape = Baseline(**params).fit(_coerce(X, kinds), y=y, scores=scores, predictions=preds)
    parts = []
    with _progress(total, args.chunk_rows, "baseline") as bar:
        for chunk in read_chunks(path, args.chunk_rows):
            X, y, scores, preds = _split(chunk, args)
            parts.append(Baseline(edges=shape, **params).fit(_coerce(X, kinds), y=y, scores=scores,
                                                             predictions=preds))
            bar.update(len(chunk))
    return Baseline.merge(parts)


def cmd_baseline(args: argparse.Namespace) -> int:
    path = Path(args.data)
    b = build_baseline(path, args)
    out = b.save(args.output)
    kinds = {k: b.feature_kinds.count(k) for k in sorted(set(b.feature_kinds))}
    print(f"wrote {out} ({b.n_rows} rows, {len(b.features)} features {kinds}, id {b.baseline_id})")
    return 0


# ----------------------------------------------------------------------------------------------------
# drift
# ----------------------------------------------------------------------------------------------------
def count_file(b: Baseline, path: Path, chunk_rows: int, score_column: str | None) -> tuple[np.ndarray, Any, int]:
    counts = np.zeros(b.reference_fractions.shape, dtype=np.int64)
    score_counts = None
    rows = 0
    with _progress(count_rows(path), chunk_rows, "counting") as bar:
        for chunk in read_chunks(path, chunk_rows):
            if score_column and score_column in chunk.columns and b.score_edges is not None:
                sc = b.score_bin_counts(chunk[score_column].to_numpy(dtype=np.float64))
                score_counts = sc if score_counts is None else score_counts + sc
            counts += b.bin_counts(as_table(chunk))
            rows += len(chunk)
            bar.update(len(chunk))
    return counts, score_counts, rows


def _fmt(v: float, width: int = 9) -> str:
    if v != v:
        return "-".rjust(width)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.2e}".rjust(width)
    return f"{v:.4f}".rjust(width)


def format_report(report: Any) -> str:
    name_w = max([len("feature")] + [len(n) for n in report.feature_names])
    head = (f"{'feature'.ljust(name_w)}  {'kind':<11} {'values':>9} {'psi':>9} {'js':>9} {'wasserst.':>9} "
            f"{'ks':>9} {'p_value':>9}  drifted")
    lines = [head, "-" * len(head)]
    for r in report.rows():
        lines.append(f"{r['feature'].ljust(name_w)}  {r['kind']:<11} {r['count']:>9} {_fmt(r['psi'])} "
                     f"{_fmt(r['jensen_shannon'])} {_fmt(r['wasserstein'])} {_fmt(r['ks'])} "
                     f"{_fmt(r['p_value'])}  {'DRIFT' if r['drifted'] else ''}")
    lines.append("")
    n_drifted = int(np.sum(report.drifted))
    lines.append(f"drifted features: {n_drifted} of {len(report.feature_names)} (share {report.drift_share:.2f}); "
                 f"dataset drift: {'yes' if report.dataset_drift else 'no'}")
    if report.prediction_scores:
        ps = report.prediction_scores
        lines.append(f"prediction scores: psi {ps['psi']:.4f}, js {ps['jensen_shannon']:.4f}, "
                     f"wasserstein {ps['wasserstein']:.4f}; drift: {'yes' if report.prediction_drift else 'no'}")
    return "\n".join(lines)


def cmd_drift(args: argparse.Namespace) -> int:
    b = Baseline.load(args.baseline)
    counts, score_counts, rows = count_file(b, Path(args.data), args.chunk_rows, args.score_column)
    thresholds = Thresholds(drift_threshold_psi=args.psi, drift_threshold_js=args.js,
                            drift_threshold_wasserstein=args.wasserstein, drift_share_threshold=args.share)
    report = drift_report(b, counts, score_counts, rows, thresholds)
    report.baseline_id = b.baseline_id
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(f"baseline {b.baseline_id} ({b.n_rows} rows) vs {args.data} ({rows} rows)\n")
        print(format_report(report))
    return 1 if args.fail_on_drift and report.dataset_drift else 0


# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otel-ml", description="otel-ml baselines and drift")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("baseline", help="make a baseline JSON from a CSV or Parquet file")
    p.add_argument("data", help="CSV or Parquet (.parquet, .pq) file")
    p.add_argument("-o", "--output", required=True, help="baseline JSON to write")
    p.add_argument("--target", help="label column")
    p.add_argument("--score-column", help="prediction score column (probability of the positive class, or value)")
    p.add_argument("--prediction-column", help="predicted label column")
    p.add_argument("--bins", type=int, default=10, help="bins per numeric feature (default 10)")
    p.add_argument("--top-k", type=int, default=20, help="categories with their own bin (default 20)")
    p.add_argument("--exclude", nargs="*", default=[], help="columns to leave out (ids, timestamps)")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows read at a time")
    p.add_argument("--sample-size", type=int, default=50_000, help="rows the quantile edges are computed on")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.set_defaults(func=cmd_baseline)
    d = sub.add_parser("drift", help="compare a CSV or Parquet file with a baseline")
    d.add_argument("baseline", help="baseline JSON")
    d.add_argument("data", help="CSV or Parquet file")
    d.add_argument("--score-column", help="prediction score column")
    d.add_argument("--format", choices=("table", "json"), default="table")
    d.add_argument("--psi", type=float, default=0.1)
    d.add_argument("--js", type=float, default=0.1)
    d.add_argument("--wasserstein", type=float, default=0.1)
    d.add_argument("--share", type=float, default=0.5)
    d.add_argument("--fail-on-drift", action="store_true", help="exit 1 when the dataset drifted")
    d.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    d.set_defaults(func=cmd_drift)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
