"""A processor process killed or stopped in the middle resumes from its store: nothing lost, nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from sklearn import metrics as skm

from otel_ml.processor import testing as t

from .conftest import free_port
from .test_scaleout import wait_for

RES = {"service.name": "api", "service.instance.id": "r1"}


class Instance:
    def __init__(self, tmp_path: Path) -> None:
        self.grpc, self.http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        self.env = {**os.environ, "OTEL_ML_PROCESSOR_GRPC_ENDPOINT": self.grpc,
                    "OTEL_ML_PROCESSOR_HTTP_ENDPOINT": self.http,
                    "OTEL_ML_PROCESSOR_STORE_PATH": str(tmp_path / "p.db"),
                    "OTEL_ML_PROCESSOR_EXPORT_ENDPOINT": "none", "OTEL_ML_PROCESSOR_COMPUTE_INTERVAL": "0.3s",
                    "OTEL_ML_PROCESSOR_PERFORMANCE_INTERVAL": "0.3s",
                    "OTEL_ML_PROCESSOR_DRIFT_MIN_ROWS": "1"}
        self.log = tmp_path / "processor.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "otel_ml.processor"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_for(lambda: requests.get(f"http://{self.http}/health", timeout=1).ok, 60, "processor did not start")

    def status(self) -> dict:
        return requests.get(f"http://{self.http}/status", timeout=5).json()

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


def send_all(sender: t.GrpcSender, signal_name: str, requests_: list) -> None:
    """Send like a collector: retry what was not acknowledged (the processor may be down for a moment)."""
    for request in requests_:
        deadline = time.monotonic() + 30
        while True:
            try:
                sender.send(signal_name, request, timeout=5)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.mark.parametrize("how", ["kill", "term"])
def test_restart_in_the_middle_loses_and_double_counts_nothing(tmp_path, how):
    rng = np.random.default_rng(0)
    n = 2000
    p = rng.uniform(0, 1, n)
    y_pred, y_true = (p > 0.5).astype(int), (rng.random(n) < p).astype(int)
    ids = [t.prediction_id() for _ in range(n)]
    predictions = [t.records_request(RES, [t.prediction(ids[i], "m", "1", label=str(y_pred[i]), score=float(p[i]))
                                           for i in range(k, k + 250)]) for k in range(0, n, 250)]
    outcomes = [t.records_request({**RES, "service.instance.id": "r2"},
                                  [t.outcome(ids[i], "m", "1", int(y_true[i])) for i in range(k, k + 250)])
                for k in range(0, n, 250)]
    start_ns = time.time_ns()
    counts_1 = {"age": [100, 300]}
    counts_2 = {"age": [150, 420]}  # the same replica's cumulative counters, later

    inst = Instance(tmp_path)
    inst.start()
    sender = t.GrpcSender(inst.grpc)
    send_all(sender, "logs", predictions[:5] + outcomes[:3])
    send_all(sender, "metrics", [t.drift_request(RES, "m", "1", start_ns, time.time_ns(), counts=counts_1,
                                                 baseline={"age": [0.5, 0.5]})])
    time.sleep(0.8)  # at least one compute tick: the drift state is checkpointed
    code = inst.stop(signal.SIGKILL if how == "kill" else signal.SIGTERM)
    assert code == (-9 if how == "kill" else 0)
    inst.start()
    # the collector would retry its last batches: some were already stored (duplicates), all the rest follows
    send_all(sender, "logs", predictions[4:] + outcomes[2:])
    send_all(sender, "metrics", [t.drift_request(RES, "m", "1", start_ns, time.time_ns(), counts=counts_2,
                                                 baseline={"age": [0.5, 0.5]})])

    def done() -> bool:
        rows = {r["window"]: r["value"] for r in inst.status()["drift"]["rows"]}
        perf = inst.status()["performance"]["coverage"]
        return rows.get("1h") == 570 and perf and perf[0]["value"] == 1.0

    wait_for(done, 20, f"processor did not catch up: {inst.status()}")
    status = inst.status()
    perf = {(r["metric"], r["window"]): r["value"] for r in status["performance"]["realised"]}
    assert perf[("accuracy", "1d")] == pytest.approx(skm.accuracy_score(y_true, y_pred), rel=1e-12)
    assert perf[("roc_auc", "1d")] == pytest.approx(skm.roc_auc_score(y_true, p), rel=1e-12)
    preds = {r["window"]: r["value"] for r in status["performance"]["predictions"]}
    assert preds["1d"] == n
    stored = {g["ml.processor.table"]: g["value"] for g in status["gauges"]["ml.processor.store.rows"]}
    assert stored == {"predictions": n, "pending_outcomes": 0}
    drift_counts = [r for r in status["drift"]["rows"] if r["window"] == "1h"]
    assert drift_counts[0]["value"] == 570  # 150 + 420: the cumulative counters neither lost nor doubled
    assert inst.stop(signal.SIGTERM) == 0
    assert '"event": "stopped"' in inst.log.read_text()
