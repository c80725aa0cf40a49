"""Two processor instances behind the collector's load_balancing exporter (collector-config/processor/),
several models: each model lives on one instance, and its numbers there are complete and correct.

With ``.stack/bin/otelcol-ml`` (scripts/build-collector.sh) the telemetry goes through the real collector:
replicas each send ONE request mixing all models, the collector splits it by ``ml.model.name``. Without the
binary the test routes by model itself (same split, no collector), and says so.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from sklearn import metrics as skm

from otel_ml.processor import testing as t

from .conftest import free_port
from .test_drift import FEATURES, N_BINS, Fleet, offline_psi

ROOT = Path(__file__).resolve().parents[2]
OTELCOL = ROOT / ".stack" / "bin" / "otelcol-ml"
LB_CONFIG = ROOT / "collector-config" / "processor" / "processor-lb.yaml"
PROCESSOR_CONFIG = ROOT / "collector-config" / "processor" / "processor.toml"
# twelve models; the processors' ports are chosen so that the hash ring gives each instance some
MODELS = ["churn", "fraud", "credit", "upsell", "ltv", "spam", "risk", "promo", "eta", "price", "stock", "nps"]
DERIVED_TO_FILE = """
exporters:
  file/derived:
    path: {path}
    format: json
    flush_interval: 200ms
service:
  pipelines:
    metrics/derived:
      exporters: [prometheus_remote_write/derived, file/derived]
"""


def lb_owner(endpoints: list[str], identifier: str) -> str:
    """The endpoint the collector's load_balancing exporter (the pinned v0.161.0) sends ``identifier`` to:
    its hash ring has 200 crc32 points per endpoint over 131,071 positions (collisions probed ahead up
    to 10), and a record goes to the first point at or after crc32(identifier); the identifier of
    ``routing_attributes: [ml.model.name]`` is ``ml.model.name=<name>|``.

    >>> lb_owner(["127.0.0.1:4691", "127.0.0.1:4644"], "ml.model.name=churn|")  # a pair that takes all twelve
    '127.0.0.1:4691'
    """
    positions = 131071
    candidates = sorted((h % positions, h, e) for e in endpoints for h in
                         (zlib.crc32(struct.pack("<I", i), zlib.crc32(e.encode())) for i in range(200)))
    used: set[int] = set()
    ring = []
    for position, _, endpoint in candidates:
        probed = 0
        while position in used and probed < 10:
            position, probed = (position + 1) % positions, probed + 1
        if probed < 10:
            used.add(position)
            ring.append((position, endpoint))
    ring.sort()
    index = bisect.bisect_left([p for p, _ in ring], zlib.crc32(identifier.encode()) % positions)
    return ring[index % len(ring)][1]


def ports_splitting_the_models() -> tuple[int, int]:
    """Two free ports for the processors' gRPC receivers whose endpoints the ring gives some models each:
    for about one port pair in 340 of this range it would put all twelve on one instance."""
    while True:
        a, b = free_port(), free_port()
        endpoints = [f"127.0.0.1:{a}", f"127.0.0.1:{b}"]
        if len({lb_owner(endpoints, f"ml.model.name={m}|") for m in MODELS}) == 2:
            return a, b


def start_processor(tmp_path: Path, name: str, derived: str, grpc_port: int) -> tuple[subprocess.Popen, str, str]:
    http_port = free_port()
    env = {**os.environ, "OTEL_ML_PROCESSOR_GRPC_ENDPOINT": f"127.0.0.1:{grpc_port}",
           "OTEL_ML_PROCESSOR_HTTP_ENDPOINT": f"127.0.0.1:{http_port}",
           "OTEL_ML_PROCESSOR_STORE_PATH": str(tmp_path / f"{name}.db"),
           "OTEL_ML_PROCESSOR_EXPORT_ENDPOINT": derived, "OTEL_ML_PROCESSOR_EXPORT_INTERVAL": "1s",
           "OTEL_ML_PROCESSOR_COMPUTE_INTERVAL": "0.5s", "OTEL_ML_PROCESSOR_PERFORMANCE_INTERVAL": "0.5s",
           "OTEL_ML_PROCESSOR_DRIFT_MIN_ROWS": "1",
           "OTEL_ML_PROCESSOR_INSTANCE_ID": name}
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "otel_ml.processor", "--config", str(PROCESSOR_CONFIG)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{http_port}"
    wait_for(lambda: requests.get(f"{base}/health", timeout=1).ok, 60, f"processor {name} did not start")
    return proc, f"127.0.0.1:{grpc_port}", base


def wait_for(check, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.RequestException, OSError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(message)


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class App:
    """Three replicas serving all models; predictions on one replica, outcomes reaching another one."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(42)
        self.fleets = {m: Fleet(seed=i) for i, m in enumerate(MODELS)}
        self.pairs: dict[str, tuple[list, list, list]] = {m: ([], [], []) for m in MODELS}
        self.cumulative: dict[tuple[int, str], tuple[dict, np.ndarray]] = {}

    def metrics(self, replica: int, start_ns: int) -> t.metrics_service_pb2.ExportMetricsServiceRequest:
        """One replica's export: ONE resource, every model's counters in it (as an instrumented process)."""
        resource = {"service.name": "ml-api", "service.instance.id": f"replica-{replica}"}
        request = None
        for k, model in enumerate(MODELS):
            fleet = self.fleets[model]
            counts, scores = fleet.counts(fleet.batch(100 + 50 * replica, 0.1 * k))
            if (replica, model) in self.cumulative:  # cumulative temporality: totals since start_ns
                before, before_scores = self.cumulative[(replica, model)]
                counts = {f: before[f] + counts[f] for f in counts}
                scores = before_scores + scores
            self.cumulative[(replica, model)] = counts, scores
            part = t.drift_request(resource, model, "1", start_ns, time.time_ns(), counts=counts,
                                   baseline={f: fleet.reference[f] for f in fleet.reference},
                                   score_counts=scores)
            if request is None:
                request = part
            else:
                request.resource_metrics[0].scope_metrics[0].metrics.extend(part.resource_metrics[0]
                                                                            .scope_metrics[0].metrics)
        return request

    def records(self, n: int) -> tuple[list, list]:
        predictions, outcomes = [], []
        for model in MODELS:
            p = self.rng.uniform(0, 1, n)
            y_pred = (p > 0.5).astype(int)
            y_true = (self.rng.random(n) < p).astype(int)
            for i in range(n):
                pid = t.prediction_id()
                predictions.append(t.prediction(pid, model, "1", label=str(y_pred[i]), score=float(p[i]),
                                                scores=[1 - float(p[i]), float(p[i])]))
                if i % 5:  # 80 % of predictions get an outcome, on another replica
                    outcomes.append(t.outcome(pid, model, "1", int(y_true[i])))
                    self.pairs[model][0].append(int(y_true[i]))
                    self.pairs[model][1].append(int(y_pred[i]))
                    self.pairs[model][2].append(float(p[i]))
        order = self.rng.permutation(len(predictions))
        return [predictions[i] for i in order], outcomes


def test_two_instances_each_model_complete_and_correct(tmp_path):
    use_collector = OTELCOL.exists() and os.access(OTELCOL, os.X_OK)
    derived_port = free_port()
    derived_file = tmp_path / "derived.jsonl"
    procs = []
    collector = None
    try:
        port_a, port_b = ports_splitting_the_models()
        a = start_processor(tmp_path, "proc-a", f"127.0.0.1:{derived_port}", port_a)
        procs.append(a[0])
        b = start_processor(tmp_path, "proc-b", f"127.0.0.1:{derived_port}", port_b)
        procs.append(b[0])
        instances = {"proc-a": a, "proc-b": b}
        if use_collector:
            lb_grpc, health = free_port(), free_port()
            env = {**os.environ,
                   "OTEL_ML_PROCESSOR_LB_GRPC_ENDPOINT": f"127.0.0.1:{lb_grpc}",
                   "OTEL_ML_PROCESSOR_LB_HTTP_ENDPOINT": f"127.0.0.1:{free_port()}",
                   "OTEL_ML_PROCESSOR_LB_DERIVED_ENDPOINT": f"127.0.0.1:{derived_port}",
                   "OTEL_ML_PROCESSOR_LB_HEALTH_ENDPOINT": f"127.0.0.1:{health}",
                   "OTEL_ML_PROCESSOR_LB_TELEMETRY_PORT": str(free_port()),
                   "OTEL_ML_PROCESSORS": f"[{a[1]}, {b[1]}]",
                   "OTEL_ML_PROMETHEUS_RW_ENDPOINT": "http://127.0.0.1:1/api/v1/write"}
            overlay = tmp_path / "derived-to-file.yaml"  # merged over the shipped config: also keep derived metrics
            overlay.write_text(DERIVED_TO_FILE.format(path=derived_file))
            log = open(tmp_path / "collector.log", "w")
            collector = subprocess.Popen([str(OTELCOL), f"--config={LB_CONFIG}", f"--config={overlay}"], env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
            wait_for(lambda: requests.get(f"http://127.0.0.1:{health}/", timeout=1).ok, 60, "collector not ready")
            sender = t.GrpcSender(f"127.0.0.1:{lb_grpc}")

            def send(signal, request, model_of=None):
                sender.send(signal, request)
        else:
            senders = {name: t.GrpcSender(inst[1]) for name, inst in instances.items()}

            def owner(model: str) -> str:
                return sorted(instances)[int(hashlib.sha256(model.encode()).hexdigest(), 16) % 2]

            def send(signal, request, model_of):
                # no collector: split the request by model ourselves, as load_balancing would
                for model in MODELS:
                    part = type(request)()
                    part.CopyFrom(request)
                    model_of(part, model)
                    senders[owner(model)].send(signal, part)

        app = App()
        start_ns = time.time_ns()
        predictions, outcomes = app.records(100)
        for replica in range(3):
            send("metrics", app.metrics(replica, start_ns), keep_metrics_of)
        half = len(predictions) // 2
        send("logs", t.records_request({"service.name": "ml-api", "service.instance.id": "replica-0"},
                                       predictions[:half]), keep_records_of)
        send("logs", t.records_request({"service.name": "ml-api", "service.instance.id": "replica-1"},
                                       outcomes), keep_records_of)  # most outcomes arrive before predictions
        send("logs", t.records_request({"service.name": "ml-api", "service.instance.id": "replica-2"},
                                       predictions[half:]), keep_records_of)
        for replica in range(3):  # a second export per replica: cumulative counters move on
            send("metrics", app.metrics(replica, start_ns), keep_metrics_of)

        def statuses() -> dict[str, dict]:
            return {name: requests.get(f"{inst[2]}/status", timeout=5).json() for name, inst in instances.items()}

        def complete() -> bool:
            joined = sum(s["counters"].get("ml.processor.joined", 0) for s in statuses().values())
            rows = {(r["model"], r["window"]): r["value"] for s in statuses().values() for r in s["drift"]["rows"]}
            want = {m: sum(len(x) for x in app.fleets[m].union["age"]) for m in MODELS}
            return joined == len(outcomes) and all(rows.get((m, "1h")) == want[m] for m in MODELS)

        wait_for(complete, 60, f"processors never saw all the data: {json.dumps(statuses())[:2000]}")
        time.sleep(1.5)  # one more compute with everything in
        status = statuses()
        homes: dict[str, set[str]] = {m: set() for m in MODELS}
        for name, s in status.items():
            for row in s["performance"]["predictions"]:
                homes[row["model"]].add(name)
            for row in s["drift"]["rows"]:
                homes[row["model"]].add(name)
        assert all(len(h) == 1 for h in homes.values()), homes  # each model's state on exactly one instance
        assert {h for hs in homes.values() for h in hs} == {"proc-a", "proc-b"}, homes  # both instances used
        if use_collector:  # and each model where the collector's hash ring puts it
            name_of = {inst[1]: name for name, inst in instances.items()}
            endpoints = [a[1], b[1]]
            assert homes == {m: {name_of[lb_owner(endpoints, f"ml.model.name={m}|")]} for m in MODELS}

        for model in MODELS:
            s = status[next(iter(homes[model]))]
            perf = {(r["metric"], r["window"]): r["value"] for r in s["performance"]["realised"] if r["model"] == model}
            y_true, y_pred, p = (np.array(x) for x in app.pairs[model])
            assert perf[("accuracy", "1d")] == pytest.approx(skm.accuracy_score(y_true, y_pred), rel=1e-12)
            assert perf[("f1", "1d")] == pytest.approx(skm.f1_score(y_true, y_pred), rel=1e-12)
            assert perf[("roc_auc", "1d")] == pytest.approx(skm.roc_auc_score(y_true, p), rel=1e-12)
            assert perf[("log_loss", "1d")] == pytest.approx(skm.log_loss(y_true, y_proba=p), rel=1e-9)
            preds = {r["window"]: r["value"] for r in s["performance"]["predictions"] if r["model"] == model}
            assert preds["1d"] == 100
            scores = {(r["feature"], r["method"], r["window"]): r["value"] for r in s["drift"]["scores"]
                      if r["model"] == model}
            offline = app.fleets[model].offline()
            for f in FEATURES:
                assert scores[(f, "psi", "1h")] == pytest.approx(
                    offline_psi(app.fleets[model].reference[f], offline[f]), rel=1e-12)
            assert len(offline["age"]) == N_BINS

        if use_collector:  # the derived metrics went back through the collector's own pipeline
            def derived_models() -> set[str]:
                found = set()
                for line in derived_file.read_text().splitlines():
                    for rm in json.loads(line).get("resourceMetrics", []):
                        for sm in rm.get("scopeMetrics", []):
                            for m in sm.get("metrics", []):
                                if m["name"] == "ml.fleet.drift.score":
                                    for dp in m["gauge"]["dataPoints"]:
                                        for kv in dp["attributes"]:
                                            if kv["key"] == "ml.model.name":
                                                found.add(kv["value"]["stringValue"])
                return found

            wait_for(lambda: derived_models() == set(MODELS), 30, "derived metrics did not reach the collector")
        else:
            message = "checked with direct routing: .stack/bin/otelcol-ml not built (scripts/build-collector.sh)"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    finally:
        for proc in procs:  # first: their last export goes to the collector
            stop(proc)
        if collector is not None:  # (its remote-write exporter retries a closed port for a while: no waiting)
            stop(collector, timeout=3)


def keep_metrics_of(request, model: str) -> None:
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                points = getattr(m, m.WhichOneof("data")).data_points
                keep = [p for p in points if any(kv.key == "ml.model.name" and kv.value.string_value == model
                                                 for kv in p.attributes)]
                del points[:]
                points.extend(keep)


def keep_records_of(request, model: str) -> None:
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            keep = [r for r in sl.log_records if any(kv.key == "ml.model.name" and kv.value.string_value == model
                                                     for kv in r.attributes)]
            del sl.log_records[:]
            sl.log_records.extend(keep)
