"""Fleet-wide drift: three replicas fed different data; Prometheus' recording rule gives the union's PSI.

Three ``opentelemetry-instrument`` processes (one service, three ``service.instance.id``s, which the SDK
gives each process) load the same pickled pipeline with its baseline next to it and score different data:
one unchanged, one with five features scaled, one with five other features shifted and some values
missing. Each exports its own cumulative ``ml_feature_bin_count_total`` and score histogram through the
agent and gateway to Prometheus, where ``collector-config/prometheus/ml.rules.yml`` sums the replicas and
computes the PSI per feature (``ml:fleet_drift_psi``). The test computes the PSI offline on the union of
the three inputs with ``otel_ml.drift.psi`` on the baseline's bins and asserts both agree to 1e-6, for
every feature and for the prediction scores, in both windows (10m and 1h), and that no single replica's
data gives those numbers.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from otel_ml.baseline import Baseline
from otel_ml.drift import psi
from otel_ml.frame import as_table

from .conftest import instrumented_env, launcher, prom_query, prom_value, unique_service, wait_for

pytestmark = pytest.mark.e2e

MODEL_NAME = "fleet_drift"
SCORE_FEATURE = "__prediction_score__"
BATCH = 25
TOLERANCE = 1e-6

REPLICA = textwrap.dedent('''
    """One replica: score the rows of the .npy file given, in batches, with the pickled model."""
    import pickle
    import sys

    import numpy as np

    with open("fleet_drift.pkl", "rb") as f:  # the baseline next to it is found by otel-ml
        model = pickle.load(f)
    X = np.load(sys.argv[1])
    for start in range(0, len(X), int(sys.argv[2])):
        model.predict_proba(X[start:start + int(sys.argv[2])])
    print("scored", len(X))
''')


def _replica_inputs(X: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    std = X.std(axis=0)
    unchanged = X[rng.choice(len(X), 300)]
    scaled = X[rng.choice(len(X), 250)].copy()
    scaled[:, :5] *= 1.4
    shifted = X[rng.choice(len(X), 350)].copy()
    shifted[:, 10:15] += 0.8 * std[10:15]
    shifted[rng.random(shifted.shape) < 0.02] = np.nan
    return [unchanged, scaled, shifted]


def _scores(model, X: np.ndarray) -> np.ndarray:
    """The replica's own scores: same batches, so the same floating-point results."""
    return np.concatenate([model.predict_proba(X[s:s + BATCH])[:, 1] for s in range(0, len(X), BATCH)])


def _offline_psi(baseline: Baseline, names: list[str], X: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    counts = baseline.bin_counts(as_table(X, names))
    values = psi(baseline.reference_fractions, counts)
    out = {name: float(values[j]) for j, name in enumerate(names)}
    out[SCORE_FEATURE] = float(psi(baseline.score_fractions, baseline.score_bin_counts(scores)))
    return out


@pytest.fixture(scope="module")
def fleet(stack, tmp_path_factory):
    from sklearn.datasets import load_breast_cancer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    workdir = tmp_path_factory.mktemp("fleet")
    data = load_breast_cancer()
    X, y, names = data.data, data.target, [str(n) for n in data.feature_names]
    model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=5000)).fit(X, y)
    with open(workdir / "fleet_drift.pkl", "wb") as f:
        pickle.dump(model, f)
    baseline = Baseline().fit(X, scores=model.predict_proba(X), feature_names=names)
    baseline.save(workdir / "fleet_drift.baseline.json")
    (workdir / "replica.py").write_text(REPLICA)

    inputs = _replica_inputs(X, np.random.default_rng(3))
    version = f"fleet-{uuid.uuid4().hex[:8]}"
    env = instrumented_env(unique_service("fleet"), OTEL_ML_MODEL_NAME=MODEL_NAME, OTEL_ML_MODEL_VERSION=version,
                           OTEL_ML_DRIFT_WINDOW_ROWS="200")
    processes = []
    for i, rows in enumerate(inputs):
        np.save(workdir / f"replica{i}.npy", rows)
        processes.append(subprocess.Popen([*launcher(), sys.executable, "replica.py", f"replica{i}.npy", str(BATCH)],
                                          env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    for process, rows in zip(processes, inputs):
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err[-3000:]
        assert f"scored {len(rows)}" in out

    union = np.vstack(inputs)
    expected = _offline_psi(baseline, names, union, np.concatenate([_scores(model, x) for x in inputs]))
    per_replica = [_offline_psi(baseline, names, x, _scores(model, x)) for x in inputs]
    rows = baseline.bin_counts(as_table(union, names)).sum(axis=1)
    return {"version": version, "names": names, "expected": expected, "per_replica": per_replica,
            "rows": dict(zip(names, rows.tolist())), "n_scored": len(union)}


def _by_feature(expr: str) -> dict[str, float]:
    return {r["metric"]["ml_feature_name"]: float(r["value"][1]) for r in prom_query(expr)}


def test_three_replicas_export_their_own_series(fleet):
    selector = f'ml_model_name="{MODEL_NAME}", ml_model_version="{fleet["version"]}"'
    replicas = wait_for(lambda: prom_value(f"count(count by (service_instance_id) (ml_input_rows_total{{{selector}}}))")
                        == 3 or None, what="three service_instance_id series")
    assert replicas
    wanted = {name: float(n) for name, n in fleet["rows"].items()}

    def arrived():
        got = _by_feature(f"sum by (ml_feature_name) (ml_feature_bin_count_total{{{selector}}})")
        return got == wanted or None

    wait_for(arrived, timeout=60, what="every replica's final bin counts in Prometheus")


@pytest.mark.parametrize("window", ["10m", "1h"])
def test_fleet_psi_equals_offline_psi_of_the_union(fleet, window):
    selector = f'ml_model_name="{MODEL_NAME}", ml_model_version="{fleet["version"]}", window="{window}"'
    wanted_rows = {name: float(n) for name, n in fleet["rows"].items()}
    wanted_rows[SCORE_FEATURE] = float(fleet["n_scored"])

    def evaluated():
        # rules run in order within an evaluation: wait for rows over all data, then for a PSI sample of that
        # evaluation or a later one (not a PSI of the previous evaluation, over part of the data)
        if _by_feature(f"ml:fleet_feature_rows{{{selector}}}") != wanted_rows:
            return None
        rows_at = _by_feature(f"timestamp(ml:fleet_feature_rows{{{selector}}})")
        psi_at = _by_feature(f"timestamp(ml:fleet_drift_psi{{{selector}}})")
        return (set(psi_at) == set(rows_at) and all(psi_at[f] >= rows_at[f] for f in rows_at)) or None

    wait_for(evaluated, timeout=90, what=f"the recording rules over all rows of the three replicas ({window})")
    got = _by_feature(f"ml:fleet_drift_psi{{{selector}}}")
    expected = fleet["expected"]
    assert set(got) == set(expected)
    diffs = {name: abs(got[name] - expected[name]) for name in expected}
    worst = max(diffs, key=diffs.get)
    print(f"window {window}: max |fleet PSI - offline PSI| = {diffs[worst]:.3g} ({worst}); "
          f"prediction PSI {got[SCORE_FEATURE]:.6f}")
    assert diffs[worst] < TOLERANCE, (worst, got[worst], expected[worst])

    # the union's PSI is not any single replica's: the rule really sums the replicas
    for replica in fleet["per_replica"]:
        assert max(abs(replica[name] - expected[name]) for name in expected) > 0.01
    # the changed features (0-4 scaled in one replica, 10-14 shifted in another) moved, the others hardly
    names = fleet["names"]
    changed = [names[j] for j in (*range(5), *range(10, 15))]
    untouched = [n for n in names if n not in changed]
    assert min(got[n] for n in changed) > max(got[n] for n in untouched)

    share = prom_value(f"ml:fleet_drift_share{{{selector}}}")
    assert share == pytest.approx(np.mean([expected[n] > 0.1 for n in names]), abs=1e-12)
