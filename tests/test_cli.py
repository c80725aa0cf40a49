"""The otel-ml command: baseline from CSV / Parquet (whole or chunked), drift table and JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from otel_ml.baseline import Baseline
from otel_ml.cli import count_rows, main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    n = 6000
    df = pd.DataFrame({
        "id": np.arange(n),
        "amount": rng.lognormal(3, 1, n),
        "items": rng.integers(1, 6, n),
        "channel": rng.choice(["web", "shop", "phone"], n, p=[0.6, 0.3, 0.1]),
        "member": rng.random(n) < 0.25,
        "score": rng.random(n),
    })
    df["label"] = (rng.random(n) < df["score"]).astype(int)
    df.loc[::17, "amount"] = np.nan
    df.to_csv(d / "train.csv", index=False)
    df.to_parquet(d / "train.parquet")
    cur = df.copy()
    cur["amount"] = cur["amount"] * 2.0
    cur["channel"] = rng.choice(["web", "shop", "phone", "app"], n, p=[0.2, 0.3, 0.1, 0.4])
    cur.to_csv(d / "current.csv", index=False)
    df.iloc[:3000].to_csv(d / "same.csv", index=False)
    return d, df


def _args(d, src, out, *extra):
    return ["baseline", str(d / src), "-o", str(d / out), "--target", "label", "--score-column", "score",
            "--exclude", "id", *extra]


def test_baseline_from_csv(data, capsys):
    d, df = data
    assert main(_args(d, "train.csv", "b.json")) == 0
    assert "6000 rows, 4 features" in capsys.readouterr().out
    b = Baseline.load(d / "b.json")
    assert b.feature_names == ["amount", "items", "channel", "member"]
    assert b.feature_kinds == ["numeric", "numeric", "categorical", "boolean"]
    amount = df["amount"].dropna()
    assert b.features[0]["count"] == amount.size and b.features[0]["mean"] == pytest.approx(amount.mean())
    assert b.calibration is not None and sum(b.calibration["rows"]) == 6000
    assert b.target["class_counts"] == [int((df.label == 0).sum()), int(df.label.sum())]


def test_chunked_equals_whole_and_parquet_equals_csv(data):
    d, _ = data
    main(_args(d, "train.csv", "whole.json"))
    main(_args(d, "train.csv", "chunked.json", "--chunk-rows", "1000"))
    main(_args(d, "train.parquet", "pq.json", "--chunk-rows", "1000"))
    whole, chunked, pq = (Baseline.load(d / f) for f in ("whole.json", "chunked.json", "pq.json"))
    assert chunked.baseline_id == whole.baseline_id == pq.baseline_id
    assert np.array_equal(chunked.reference_counts, whole.reference_counts)


def test_chunked_with_small_sample_keeps_exact_counts_and_moments(data):
    d, df = data
    main(_args(d, "train.csv", "sampled.json", "--chunk-rows", "1000", "--sample-size", "500"))
    b = Baseline.load(d / "sampled.json")
    amount = df["amount"].dropna()
    f = b.features[0]
    assert sum(f["bin_counts"]) == amount.size and f["missing"] == df["amount"].isna().sum()
    assert f["mean"] == pytest.approx(amount.mean(), rel=1e-12) and f["std"] == pytest.approx(amount.std(ddof=0))
    assert np.allclose(np.array(f["bin_counts"]) / amount.size, 0.1, atol=0.04)  # edges from 500 rows


def test_count_rows(data, tmp_path):
    d, _ = data
    assert count_rows(d / "train.csv") == 6000 and count_rows(d / "train.parquet") == 6000
    (tmp_path / "nolf.csv").write_text("a,b\n1,2\n3,4")
    assert count_rows(tmp_path / "nolf.csv") == 2


def test_missing_target_column_is_a_clear_error(data):
    d, _ = data
    with pytest.raises(SystemExit, match="'nope' is not in the data"):
        main(["baseline", str(d / "train.csv"), "-o", str(d / "x.json"), "--target", "nope"])


def test_drift_table_flags_the_changed_columns(data, capsys):
    d, _ = data
    main(_args(d, "train.csv", "b.json"))
    capsys.readouterr()
    code = main(["drift", str(d / "b.json"), str(d / "current.csv"), "--score-column", "score", "--fail-on-drift"])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and line.split()[0] in
             ("amount", "items", "channel", "member")}
    assert "DRIFT" in lines["amount"] and "DRIFT" in lines["channel"]
    assert "DRIFT" not in lines["items"] and "DRIFT" not in lines["member"]
    assert "drifted features: 2 of 4 (share 0.50); dataset drift: yes" in out
    assert "prediction scores: psi 0.0000" in out
    assert code == 1


def test_drift_json_and_no_drift_exit_code(data, capsys):
    d, _ = data
    main(_args(d, "train.csv", "b.json"))
    capsys.readouterr()
    code = main(["drift", str(d / "b.json"), str(d / "same.csv"), "--format", "json", "--fail-on-drift"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["drifted_features"] == [] and report["n_rows"] == 3000
    assert report["baseline_id"] == Baseline.load(d / "b.json").baseline_id
    assert all(f["psi"] < 0.01 for f in report["features"])


def test_module_entry_point(data):
    d, _ = data
    out = subprocess.run([sys.executable, "-m", "otel_ml.cli", *_args(d, "train.csv", "m.json")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("wrote ")
