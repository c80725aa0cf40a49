"""The processor tier end to end: replicas -> agent -> gateway -> processor-lb -> two processors -> Prometheus.

Three ``opentelemetry-instrument`` Flask replicas (one service, three ``service.instance.id``s) serve two
models pickled with their baselines next to them: ``breast_cancer`` (binary, scikit-learn's breast-cancer
data) and ``wine`` (three classes, the wine data); the feeder hashes them to different processors. Each
replica gets its own data: replica 0 as the training data, replica 1 with four features scaled, replica 2
with four others shifted and 2 % of the values missing. Prediction records are on (rate 1). Outcomes are
recorded by a separate labelling process that never ran a model (``record_outcome(pid, actual,
model=name)``): no outcome meets its prediction in a process, the processor owning the model joins each.

Timeline: phase 1 (predictions; half of their outcomes; wait until the owning processors hold and joined
them); the processor owning ``breast_cancer`` is stopped (``scripts/stack.sh stop``, SIGTERM); phase 2
goes on while it is down (predictions, the other half of phase 1's outcomes and ten of them a second
time) until the feeder collector has failed to send to it and queued the data for a retry; the processor
is started again while phase 2's predictions continue, then their outcomes come; the replicas stop
(their last export).

Then Prometheus (metrics derived by the processors, through the feeder's remote write) must show, per
model and from exactly one processor instance:

* ``ml_fleet_predictions`` = every prediction, ``ml_fleet_outcome_coverage_ratio`` = 1 (1d window);
* ``ml_fleet_performance_ratio`` = ``sklearn.metrics`` on all (truth, prediction) pairs, each pair once:
  accuracy, precision, recall, F1, ROC AUC, log loss, Brier score (1d window, relative 1e-9);
* ``ml_fleet_drift_score_ratio`` = ``otel_ml.drift.psi`` and ``jensen_shannon`` of the union of the three
  replicas' rows (and scores, ``__prediction_score__``) against the baseline, per feature (1h window,
  1e-6); ``ml_fleet_drift_rows`` = every row once; ``ml_fleet_drift_share_ratio`` to match.

Needs the whole stack, processor tier included (``scripts/stack.sh start``): fails under ``CI=true``
when it is missing, skips otherwise. Takes 30 to 60 seconds.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from sklearn import metrics as skm

from otel_ml.baseline import Baseline
from otel_ml.drift import jensen_shannon, psi
from otel_ml.frame import as_table

from .conftest import ROOT, instrumented_env, launcher, prom_query, require_healthy, unique_service

pytestmark = pytest.mark.e2e

APPS = Path(__file__).parent / "apps"
STACK_SH = ROOT / "scripts" / "stack.sh"
TIER_HEALTH = {
    "processor-lb": "http://127.0.0.1:13137/",
    "processor-a": "http://127.0.0.1:4718/health",
    "processor-b": "http://127.0.0.1:4728/health",
}
PROCESSOR_STATUS = {"processor-a": "http://127.0.0.1:4718/status", "processor-b": "http://127.0.0.1:4728/status"}
PROCESSOR_OTLP = {"processor-a": "127.0.0.1:4717", "processor-b": "127.0.0.1:4727"}
FEEDER_LOG = ROOT / ".stack" / "logs" / "processor-lb.log"
SCORE_FEATURE = "__prediction_score__"
# With the stack's two processors the feeder's hash ring puts breast_cancer on processor-a, wine on processor-b
# (the test does not depend on it: it finds each model's owner, and restarts the owner of the first one).
MODELS = ("breast_cancer", "wine")
REPLICAS = 3
ROWS = 100  # rows per replica, model and phase
BATCH = 20  # rows per request
DRIFT_WINDOW, PERFORMANCE_WINDOW = "1h", "1d"
DRIFT_TOLERANCE = 1e-6
PERFORMANCE_RTOL = 1e-9
SETTLE_TIMEOUT = 120  # seconds for the last data to show in Prometheus


# -- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tier(stack) -> None:
    require_healthy(TIER_HEALTH, "processor tier")


def _datasets() -> dict:
    from sklearn.datasets import load_breast_cancer, load_wine

    return {"breast_cancer": load_breast_cancer(), "wine": load_wine()}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Each model pickled with its baseline next to it, in the replicas' working directory."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    workdir = tmp_path_factory.mktemp("processor-pipeline")
    out = {"workdir": workdir}
    for name, data in _datasets().items():
        X, y, names = data.data, data.target, [str(n) for n in data.feature_names]
        model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=5000)).fit(X, y)
        with open(workdir / f"{name}.pkl", "wb") as f:
            pickle.dump(model, f)
        baseline = Baseline().fit(X, scores=model.predict_proba(X), feature_names=names)
        baseline.save(workdir / f"{name}.baseline.json")
        out[name] = {"X": X, "y": y, "names": names, "baseline": baseline, "classes": [int(c) for c in model.classes_]}
    return out


# -- helpers --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stack(*args: str) -> None:
    env = {**os.environ, "OTEL_ML_PYTHON": os.environ.get("OTEL_ML_PYTHON", sys.executable)}
    result = subprocess.run([str(STACK_SH), *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"stack.sh {' '.join(args)} failed:\n{result.stderr[-3000:]}"


def _healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _replica_rows(X: np.ndarray, replica: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """ROWS rows drawn from X (and their indices), changed as this replica's traffic is."""
    idx = rng.choice(len(X), ROWS)
    rows = X[idx].copy()
    if replica == 1:
        rows[:, :4] *= 1.3
    elif replica == 2:
        rows[:, 4:8] += 0.8 * X.std(axis=0)[4:8]
        rows[rng.random(rows.shape) < 0.02] = np.nan
    return rows, idx


def _status(url: str) -> dict:
    try:
        return requests.get(url, timeout=5).json()
    except (requests.RequestException, ValueError):
        return {}


def _status_value(status: dict, section: str, name: str, version: str) -> float | None:
    for row in status.get("performance", {}).get(section, []):
        if row["model"] == name and row["version"] == version and row["window"] == PERFORMANCE_WINDOW:
            return row["value"]
    return None


def _feeder_retries(processor: str) -> int:
    """Exports the feeder collector failed to send to ``processor`` and queued for a retry (its log says so;
    the load_balancing exporter's per-endpoint exporters have no metrics of their own)."""
    endpoint = f'"endpoint": "{PROCESSOR_OTLP[processor]}"'
    try:
        text = FEEDER_LOG.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if "Will retry the request" in line and endpoint in line)


class Fleet:
    """The replicas, what they were asked and answered, and the labelling job."""

    def __init__(self, models: dict, version: str) -> None:
        self.models, self.version, self.workdir = models, version, models["workdir"]
        self.service = unique_service("processor-e2e")
        self.ports = [_free_port() for _ in range(REPLICAS)]
        self.procs: list[subprocess.Popen] = []
        # per model: rows, probabilities, truths, prediction ids, replica of each request's rows
        self.sent = {name: {"rows": [], "proba": [], "truth": [], "ids": [], "replica": []} for name in MODELS}
        self.rng = np.random.default_rng(6)
        self.labelled = 0

    def start(self) -> None:
        for port in self.ports:
            env = instrumented_env(self.service, OTEL_ML_MODEL_VERSION=self.version,
                                   OTEL_ML_PREDICTION_ID_FIELD="prediction_id",
                                   OTEL_ML_PREDICTION_RECORDS_RATE="1", OTEL_BLRP_SCHEDULE_DELAY="200",
                                   REPLICA_MODELS=",".join(MODELS), PORT=str(port))
            log = open(self.workdir / f"replica-{port}.log", "w")
            self.procs.append(subprocess.Popen([*launcher(), sys.executable, str(APPS / "processor_replica.py")],
                                               env=env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT))
        for port, proc in zip(self.ports, self.procs):
            def up(port=port, proc=proc) -> bool:
                assert proc.poll() is None, (self.workdir / f"replica-{port}.log").read_text()[-3000:]
                return _healthy(f"http://127.0.0.1:{port}/health")
            _wait(up, 90, f"replica on port {port}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # exits normally: the SDK exports what it holds
        for port, proc in zip(self.ports, self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.returncode == 0, (self.workdir / f"replica-{port}.log").read_text()[-3000:]

    def plan(self) -> dict:
        """One phase's rows: ROWS per replica and model, sent in ROWS / BATCH rounds."""
        return {(replica, name): _replica_rows(self.models[name]["X"], replica, self.rng)
                for replica in range(REPLICAS) for name in MODELS}

    def predict(self, planned: dict, rounds: range, pause: float = 0.0) -> dict[str, list[int]]:
        """Send these rounds of a plan (one request per replica and model each, ``pause`` seconds apart, so
        the replicas' cumulative counters change from one export to the next); returns the positions (in
        self.sent) of the new predictions."""
        new: dict[str, list[int]] = {name: [] for name in MODELS}
        for k, start in enumerate(range(0, ROWS, BATCH)[rounds.start:rounds.stop]):
            if k and pause:
                time.sleep(pause)
            for replica, port in enumerate(self.ports):
                for name in MODELS:
                    rows, idx = planned[(replica, name)]
                    batch = rows[start:start + BATCH]
                    body = {"rows": [[None if math.isnan(v) else float(v) for v in row] for row in batch]}
                    response = requests.post(f"http://127.0.0.1:{port}/predict/{name}", json=body, timeout=30)
                    assert response.status_code == 200, response.text[:2000]
                    answer = response.json()
                    ids = answer["prediction_id"]
                    assert len(ids) == len(batch) and len(answer["proba"]) == len(batch), answer
                    sent = self.sent[name]
                    for i in range(len(batch)):
                        new[name].append(len(sent["ids"]))
                        sent["rows"].append(batch[i])
                        sent["proba"].append(answer["proba"][i])
                        sent["truth"].append(int(self.models[name]["y"][idx[start + i]]))
                        sent["ids"].append(ids[i])
                        sent["replica"].append(replica)
        return new

    def label(self, outcomes: list[list]) -> None:
        """Run the labelling job on [prediction id, actual, model] items; it never joins one itself."""
        self.labelled += 1
        path = self.workdir / f"outcomes-{self.labelled}.json"
        path.write_text(json.dumps(outcomes))
        env = instrumented_env(unique_service("labeller"), OTEL_BLRP_SCHEDULE_DELAY="200")
        result = subprocess.run([*launcher(), sys.executable, str(APPS / "processor_labeller.py"), str(path)],
                                env=env, cwd=self.workdir, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"recorded {len(outcomes)} joined 0" in result.stdout, result.stdout + result.stderr[-2000:]

    def outcomes(self, positions: dict[str, list[int]]) -> list[list]:
        return [[self.sent[name]["ids"][i], self.sent[name]["truth"][i], name]
                for name in MODELS for i in positions[name]]

    def arrays(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        sent = self.sent[name]
        return (np.vstack(sent["rows"]), np.asarray(sent["proba"], dtype=np.float64), np.asarray(sent["truth"]),
                np.asarray(sent["replica"]))


# -- the offline computation ----------------------------------------------------------------------------
def expected_performance(truth: np.ndarray, proba: np.ndarray, classes: list[int]) -> dict[str, float]:
    """sklearn.metrics on every pair once (the labels are what otel-ml reports: the most probable class)."""
    predicted = np.asarray(classes)[proba.argmax(axis=1)]
    if len(classes) == 2:
        kw: dict = {"pos_label": classes[1]}
        auc = skm.roc_auc_score(truth == classes[1], proba[:, 1])
        brier = skm.brier_score_loss(truth, proba[:, 1], pos_label=classes[1])
    else:
        kw = {"average": "macro"}
        auc = skm.roc_auc_score(truth, proba, multi_class="ovr", average="macro", labels=classes)
        brier = skm.brier_score_loss(truth, proba, labels=classes)
    return {"accuracy": skm.accuracy_score(truth, predicted),
            "precision": skm.precision_score(truth, predicted, zero_division=0, **kw),
            "recall": skm.recall_score(truth, predicted, zero_division=0, **kw),
            "f1": skm.f1_score(truth, predicted, zero_division=0, **kw),
            "roc_auc": auc, "log_loss": skm.log_loss(truth, proba, labels=classes), "brier": brier}


def expected_drift(baseline: Baseline, names: list[str], rows: np.ndarray, proba: np.ndarray) -> dict:
    """PSI and Jensen-Shannon distance per feature (and of the scores) of these rows against the baseline."""
    counts = baseline.bin_counts(as_table(rows, names))
    score_counts = baseline.score_bin_counts(proba)
    out: dict = {"rows": int(max(counts.sum(axis=1).max(), score_counts.sum()))}
    for method, distance in (("psi", psi), ("jensen_shannon", jensen_shannon)):
        values = {name: float(v) for name, v in zip(names, distance(baseline.reference_fractions, counts))}
        values[SCORE_FEATURE] = float(distance(baseline.score_fractions, score_counts))
        out[method] = values
    out["psi_share"] = float(np.mean([out["psi"][n] >= 0.1 for n in names]))
    return out


# -- what Prometheus shows ------------------------------------------------------------------------------
def observed(name: str, version: str) -> dict:
    sel = f'ml_model_name="{name}", ml_model_version="{version}"'
    perf_sel = f'{sel}, ml_window="{PERFORMANCE_WINDOW}"'
    drift_sel = f'{sel}, ml_window="{DRIFT_WINDOW}"'

    def by(expr: str, label: str | None = None) -> dict:
        return {(r["metric"].get(label) if label else None): float(r["value"][1]) for r in prom_query(expr)}

    def instances(expr: str) -> set[str]:
        return {r["metric"].get("service_instance_id", "?") for r in prom_query(expr)}

    out = {
        "instances": (instances(f"ml_fleet_predictions{{{perf_sel}}}")
                      | instances(f"ml_fleet_drift_rows{{{drift_sel}}}")),
        "predictions": by(f"ml_fleet_predictions{{{perf_sel}}}").get(None),
        "coverage": by(f"ml_fleet_outcome_coverage_ratio{{{perf_sel}}}").get(None),
        "performance": by(f"ml_fleet_performance_ratio{{{perf_sel}}}", "ml_performance_metric"),
        "rows": by(f"ml_fleet_drift_rows{{{drift_sel}}}").get(None),
        "psi_share": by(f'ml_fleet_drift_share_ratio{{{drift_sel}, ml_drift_method="psi"}}').get(None),
    }
    for method in ("psi", "jensen_shannon"):
        out[method] = by(f'ml_fleet_drift_score_ratio{{{drift_sel}, ml_drift_method="{method}"}}', "ml_feature_name")
    return out


def mismatches(got: dict, expected: dict, n: int) -> list[str]:
    """Everything in which Prometheus differs from the offline computation (empty: it matches)."""
    out = []
    if len(got["instances"]) != 1:
        out.append(f"series from processor instances {sorted(got['instances'])} (want exactly one)")
    if got["predictions"] != n:
        out.append(f"predictions {got['predictions']} != {n}")
    if got["coverage"] != 1.0:
        out.append(f"outcome coverage {got['coverage']} != 1")
    perf = expected["performance"]
    if set(got["performance"]) != set(perf):
        out.append(f"performance metrics {sorted(got['performance'])} != {sorted(perf)}")
    for metric, value in perf.items():
        if metric in got["performance"] and not math.isclose(got["performance"][metric], value,
                                                              rel_tol=PERFORMANCE_RTOL, abs_tol=1e-12):
            out.append(f"{metric} {got['performance'][metric]!r} != sklearn {value!r}")
    drift = expected["drift"]
    if got["rows"] != drift["rows"]:
        out.append(f"drift rows {got['rows']} != {drift['rows']}")
    for method in ("psi", "jensen_shannon"):
        if set(got[method]) != set(drift[method]):
            out.append(f"{method} features: missing {sorted(set(drift[method]) - set(got[method]))[:5]}, "
                       f"extra {sorted(set(got[method]) - set(drift[method]))[:5]}")
            continue
        worst = max(drift[method], key=lambda f: abs(got[method][f] - drift[method][f]))
        if abs(got[method][worst] - drift[method][worst]) >= DRIFT_TOLERANCE:
            out.append(f"{method} of {worst!r}: {got[method][worst]!r} != offline {drift[method][worst]!r}")
    if got["psi_share"] is None or abs(got["psi_share"] - drift["psi_share"]) > 1e-12:
        out.append(f"psi drift share {got['psi_share']} != {drift['psi_share']}")
    return out


# -- the test -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tier, models) -> dict:
    version = f"e2e-{uuid.uuid4().hex[:8]}"
    fleet = Fleet(models, version)
    victim, victim_restarted, owners = None, False, {}
    try:
        fleet.start()

        # phase 1: predictions, then half of their outcomes; wait until the owners hold and joined them
        rounds = ROWS // BATCH
        first = fleet.predict(fleet.plan(), range(rounds))
        early = {name: positions[::2] for name, positions in first.items()}
        late = {name: positions[1::2] for name, positions in first.items()}
        fleet.label(fleet.outcomes(early))

        def phase_one_joined() -> bool:
            statuses = {p: _status(url) for p, url in PROCESSOR_STATUS.items()}
            for name in MODELS:
                for processor, status in statuses.items():
                    if _status_value(status, "predictions", name, version) is not None:
                        owners[name] = processor
                if name not in owners:
                    return False
                status = statuses[owners[name]]
                if _status_value(status, "predictions", name, version) != REPLICAS * ROWS:
                    return False
                if _status_value(status, "coverage", name, version) != len(early[name]) / (REPLICAS * ROWS):
                    return False
            return True

        _wait(phase_one_joined, 90, "phase 1 predictions and outcomes stored and joined by the processors")
        victim = owners[MODELS[0]]
        print(f"models by processor: {owners}; restarting {victim}")

        # phase 2: the owner of the first model goes down while traffic goes on; the feeder queues and retries
        retries_before = _feeder_retries(victim)
        _stack("stop", victim)
        second_plan = fleet.plan()
        second = fleet.predict(second_plan, range(rounds // 2 + 1), pause=1.5)
        repeated = {name: positions[:10] for name, positions in early.items()}  # a labelling job's retry
        fleet.label(fleet.outcomes(late) + fleet.outcomes(repeated))
        _wait(lambda: _feeder_retries(victim) > retries_before, 60,
              f"the feeder to fail sending to the stopped {victim} and queue the data for a retry")
        _stack("start", victim)
        victim_restarted = True
        # traffic goes on: fresh exports and the feeder's backlog (each request on its own retry timer)
        # reach the restarted processor in any order
        rest = fleet.predict(second_plan, range(rounds // 2 + 1, rounds), pause=1.0)
        for name in MODELS:
            second[name] += rest[name]
        fleet.label(fleet.outcomes(second))
        fleet.stop()
    finally:
        if fleet.procs:
            for proc in fleet.procs:
                if proc.poll() is None:
                    proc.kill()
        if victim is not None and not _healthy(TIER_HEALTH[victim]):
            _stack("start", victim)  # never leave the stack without it
    return {"fleet": fleet, "version": version, "owners": owners, "victim": victim,
            "restarted": victim_restarted}


def test_fleet_numbers_equal_the_offline_computation(run, models):
    fleet, version = run["fleet"], run["version"]
    assert run["restarted"]
    expected, sizes = {}, {}
    for name in MODELS:
        data = models[name]
        rows, proba, truth, replica = fleet.arrays(name)
        sizes[name] = len(truth)
        assert sizes[name] == 2 * REPLICAS * ROWS
        assert len(set(fleet.sent[name]["ids"])) == sizes[name]  # one id per row, fleet-wide unique
        drift = expected_drift(data["baseline"], data["names"], rows, proba)
        # the union's drift is not one replica's: the processor really adds the replicas up
        for r in range(REPLICAS):
            alone = expected_drift(data["baseline"], data["names"], rows[replica == r], proba[replica == r])
            assert max(abs(alone["psi"][f] - drift["psi"][f]) for f in drift["psi"]) > 0.01
        expected[name] = {"performance": expected_performance(truth, proba, data["classes"]), "drift": drift}

    deadline = time.monotonic() + SETTLE_TIMEOUT
    got = {}
    while True:
        got = {name: observed(name, version) for name in MODELS}
        problems = {name: mismatches(got[name], expected[name], sizes[name]) for name in MODELS}
        if not any(problems.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not any(problems.values()), json.dumps(problems, indent=1)

    for name in MODELS:
        perf, drift = got[name]["performance"], got[name]["psi"]
        worst = max(drift, key=lambda f: abs(drift[f] - expected[name]["drift"]["psi"][f]))
        print(f"{name} ({sizes[name]} predictions, processor {sorted(got[name]['instances'])[0]}): "
              + ", ".join(f"{k} {v:.6f}" for k, v in sorted(perf.items()))
              + f"; max |fleet PSI - offline PSI| {abs(drift[worst] - expected[name]['drift']['psi'][worst]):.2g}"
              + f" ({worst}); prediction PSI {drift[SCORE_FEATURE]:.6f}; PSI share {got[name]['psi_share']:.3f}")
