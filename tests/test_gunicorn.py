"""A real gunicorn with three pre-forked workers under ``opentelemetry-instrument``, exporting to an OTLP stub.

Every worker must export (spans, otel-ml's metrics under its own ``service.instance.id``, the SDK's HTTP
metrics, log records) and nothing may be lost when the workers stop: the export intervals are set far
beyond the test's length, so everything that arrives was flushed at worker exit.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from otel_ml import semconv

pytestmark = pytest.mark.skipif(
    os.environ.get("CI") != "true"  # under CI a missing gunicorn (a test dependency) fails the test
    and shutil.which("gunicorn") is None and not Path(sys.executable).with_name("gunicorn").exists(),
    reason="gunicorn not installed")

WORKERS = 3
APP = textwrap.dedent('''
    import os
    import pickle

    import numpy as np
    from flask import Flask, jsonify, request

    from otel_ml.instrumentation.flask import register_feedback

    with open(os.environ["MODEL_PATH"], "rb") as fh:
        model = pickle.load(fh)
    app = Flask(__name__)
    register_feedback(app)


    @app.post("/predict")
    def predict():
        body = request.get_json(silent=True)
        if not isinstance(body, list):
            return jsonify(error="expected a list of rows"), 400
        proba = model.predict_proba(np.asarray(body, dtype=float))[:, 1]
        return jsonify(pid=os.getpid(), probability=proba.tolist())


    @app.get("/pid")  # readiness: not traced (OTEL_PYTHON_FLASK_EXCLUDED_URLS), no model call
    def pid():
        return jsonify(pid=os.getpid())
''')

KINDS = {"/v1/traces": ExportTraceServiceRequest, "/v1/metrics": ExportMetricsServiceRequest,
         "/v1/logs": ExportLogsServiceRequest}


class Receiver:
    """An OTLP/HTTP (protobuf) receiver keeping every request it gets."""

    def __init__(self) -> None:
        self.received: dict[str, list] = defaultdict(list)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                kind = KINDS.get(self.path)
                if kind is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                message = kind()
                message.ParseFromString(body)
                with receiver.lock:
                    receiver.received[self.path].append(message)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _attributes(kvs) -> dict:
    out = {}
    for kv in kvs:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _executable(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


@pytest.fixture(scope="module")
def run(tmp_path_factory, breast_cancer):
    """Serve under gunicorn, send traffic from several threads, stop gracefully; return what arrived."""
    X, y = breast_cancer
    work = tmp_path_factory.mktemp("gunicorn")
    with open(work / "gmodel.pkl", "wb") as fh:
        pickle.dump(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y), fh)
    (work / "app.py").write_text(APP)
    receiver = Receiver()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "OTEL_SERVICE_NAME": "gunicorn-test",
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        # nothing is exported on a timer during the test: what arrives was flushed when a worker stopped
        "OTEL_METRIC_EXPORT_INTERVAL": "600000", "OTEL_BSP_SCHEDULE_DELAY": "600000",
        "OTEL_BLRP_SCHEDULE_DELAY": "600000", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100000",
        "OTEL_BSP_MAX_QUEUE_SIZE": "100000", "OTEL_BLRP_MAX_QUEUE_SIZE": "100000",
        "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "100000",
        "OTEL_ML_PREDICTION_RECORDS_RATE": "1", "OTEL_ML_PREDICT_ROUTES": "/predict",
        "OTEL_PYTHON_FLASK_EXCLUDED_URLS": "pid",
        "MODEL_PATH": str(work / "gmodel.pkl"),
        "PYTHONPATH": os.pathsep.join([str(work), env.get("PYTHONPATH", "")]).strip(os.pathsep),
    })
    log = open(work / "gunicorn.log", "w")
    server = subprocess.Popen(
        [_executable("opentelemetry-instrument"), _executable("gunicorn"), "-w", str(WORKERS), "-b",
         f"127.0.0.1:{port}", "--graceful-timeout", "30", "app:app"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    rows = X.to_numpy().tolist()
    try:
        deadline = time.monotonic() + 120
        while True:  # the master listens before the workers boot: requests then wait in the backlog
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"gunicorn did not start: {(work / 'gunicorn.log').read_text()[-3000:]}")
                time.sleep(0.3)
        ready: set[int] = set()  # every worker booted, so that the traffic below reaches each of them
        with ThreadPoolExecutor(8) as pool:
            while len(ready) < WORKERS:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"workers did not boot: {(work / 'gunicorn.log').read_text()[-3000:]}")
                ready.update(pool.map(lambda _: requests.get(f"{url}/pid", timeout=20).json()["pid"], range(24)))

        def call(i: int) -> tuple[int, list[str]]:
            if i % 10 == 9:  # a rejected request
                return requests.post(f"{url}/predict", json={"bad": True}, timeout=20).status_code, []
            response = requests.post(f"{url}/predict", json=rows[i % 500:i % 500 + 1 + i % 3], timeout=20)
            ids = response.headers["X-Prediction-Id"].split(",")
            return response.json()["pid"], ids

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(240)))
        predicted = [(pid, ids) for pid, ids in results if ids]
        outcome_ids = [i for _, ids in predicted for i in ids]
        for start in range(0, len(outcome_ids), 50):  # outcomes reach whichever worker takes the request
            requests.post(f"{url}/feedback", json=[{"prediction_id": i, "actual": 1}
                                                   for i in outcome_ids[start:start + 50]], timeout=20)
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: workers finish and exit, atexit handlers flush
        try:
            server.wait(90)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()
        time.sleep(0.5)
        receiver.close()
    return {"results": results, "predicted": predicted, "received": receiver.received,
            "log": (work / "gunicorn.log").read_text(), "outcome_ids": outcome_ids,
            "feedback_requests": (len(outcome_ids) + 49) // 50}


def _spans(run) -> list:
    return [(s, _attributes(rs.resource.attributes)) for m in run["received"]["/v1/traces"]
            for rs in m.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _last_metrics(run) -> dict[str, dict[str, list]]:
    """service.instance.id -> metric name -> data points of that process's newest export (cumulative)."""
    latest: dict[str, dict[str, list]] = {}
    for message in run["received"]["/v1/metrics"]:
        for rm in message.resource_metrics:
            instance = _attributes(rm.resource.attributes)["service.instance.id"]
            metrics = latest.setdefault(instance, {})
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    metrics[metric.name] = list(getattr(metric, kind).data_points)
    return latest


def test_several_workers_served(run):
    pids = {pid for pid, _ in run["predicted"]}
    assert len(pids) == WORKERS, run["log"][-2000:]


def test_every_request_span_arrives(run):
    spans = _spans(run)
    server = [s for s, _ in spans if s.kind == s.SPAN_KIND_SERVER]
    total = len(run["results"]) + run["feedback_requests"]
    assert len(server) == total
    model = [s for s, _ in spans if s.name == "predict_proba gmodel"]  # named after the pickle file
    assert len(model) == len(run["predicted"])
    span_ids = {_attributes(s.attributes).get(semconv.PREDICTION_ID) for s in server}
    assert {ids[0] for _, ids in run["predicted"]} <= span_ids


def test_every_worker_exports_its_own_metrics_and_nothing_is_lost(run):
    latest = _last_metrics(run)
    ml = {instance: m for instance, m in latest.items() if semconv.INPUT_ROWS_METRIC in m}
    assert len(ml) == WORKERS, f"otel-ml metrics from {len(ml)} distinct service.instance.id"
    rows = sum(p.as_int for m in ml.values() for p in m[semconv.INPUT_ROWS_METRIC])
    assert rows == sum(len(ids) for _, ids in run["predicted"])
    errors = sum(p.as_int for m in latest.values() for p in m.get(semconv.INPUT_ERRORS, []))
    assert errors == sum(1 for _, ids in run["results"] if not ids)
    outcomes = sum(p.as_int for m in latest.values() for p in m.get(semconv.OUTCOME_COUNT, []))
    assert outcomes == len(run["outcome_ids"])
    # the SDK's own HTTP metrics, too, per worker
    http = [p for m in latest.values() for name, points in m.items() if name.startswith("http.server.") and
            "duration" in name for p in points]
    assert sum(p.count for p in http) == len(run["results"]) + run["feedback_requests"]


def test_every_prediction_record_arrives(run):
    records = [_attributes(r.attributes) for m in run["received"]["/v1/logs"] for rl in m.resource_logs
               for sl in rl.scope_logs for r in sl.log_records]
    predicted = {i for _, ids in run["predicted"] for i in ids}
    got = {r[semconv.PREDICTION_ID] for r in records if r.get(semconv.RECORD_KIND) == "prediction"}
    assert got == predicted
    outcome_records = [r for r in records if r.get(semconv.RECORD_KIND) == "outcome"]
    assert len(outcome_records) == len(run["outcome_ids"])
