"""Real gRPC and HTTP on loopback: OTLP in (protobuf, JSON, gzip), protocol errors, push-back, health, OTLP out."""

from __future__ import annotations

import gzip
import json
import threading
import time
from concurrent import futures

import grpc
import pytest
import requests
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from otel_ml import semconv
from otel_ml.processor import testing as t

from .conftest import free_port

RES = {"service.name": "api", "service.instance.id": "r1"}
PROTO = {"Content-Type": "application/x-protobuf"}


def http(processor, path="/v1/logs") -> str:
    return f"http://{processor.addresses['http']}{path}"


def test_grpc_and_http_ingest_with_partial_success(make_processor):
    processor, _ = make_processor(serve=True)
    sender = t.GrpcSender(processor.addresses["grpc"])
    ids = [t.prediction_id() for _ in range(5)]
    bad = t.prediction("", "m", "1", label="1")  # no prediction id: rejected, the rest accepted
    raw = sender.send("logs", t.records_request(RES, [t.prediction(i, "m", "1", label="1") for i in ids] + [bad]))
    response = t.logs_service_pb2.ExportLogsServiceResponse.FromString(raw)
    assert response.partial_success.rejected_log_records == 1
    assert "ml.prediction.id" in response.partial_success.error_message
    r = requests.post(http(processor), data=t.records_request(RES, [t.outcome(i, "m", "1", 1) for i in ids])
                      .SerializeToString(), headers=PROTO, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-protobuf"
    assert processor.counters[semconv.PROCESSOR_JOINED] == 5
    sender.send("traces", b"")  # traces are accepted and ignored
    sender.close()


def test_http_json_with_hex_ids_and_gzip(make_processor):
    processor, _ = make_processor(serve=True)
    pid = t.prediction_id()
    doc = json_format.MessageToDict(t.records_request(RES, [t.prediction(pid, "m", "1", label="cat")]))
    record = doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    record["traceId"], record["spanId"] = pid[:32], pid[33:49]  # OTLP/JSON: hex, not base64
    record["someFutureField"] = {"x": 1}  # unknown fields are ignored
    r = requests.post(http(processor), data=json.dumps(doc), headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = gzip.compress(t.records_request(RES, [t.outcome(pid, "m", "1", "cat")]).SerializeToString())
    r = requests.post(http(processor), data=body, headers={**PROTO, "Content-Encoding": "gzip"}, timeout=10)
    assert r.status_code == 200
    assert processor.counters[semconv.PROCESSOR_JOINED] == 1


def _status(response: requests.Response) -> status_pb2.Status:
    if response.headers["Content-Type"] == "application/json":
        return json_format.Parse(response.content, status_pb2.Status())
    return status_pb2.Status.FromString(response.content)


def test_malformed_requests_get_protocol_errors_and_nothing_breaks(make_processor):
    processor, _ = make_processor(serve=True)
    sender = t.GrpcSender(processor.addresses["grpc"])
    with pytest.raises(grpc.RpcError) as err:
        sender.send("logs", b"\xff\xff\xff not protobuf")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    r = requests.post(http(processor), data=b"\x0a\xff\xff garbage", headers=PROTO, timeout=10)
    assert r.status_code == 400 and _status(r).code == 3 and "protobuf" in _status(r).message
    r = requests.post(http(processor), data=b"{not json", headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and "JSON" in _status(r).message
    r = requests.post(http(processor), data=b'{"resourceLogs": 5}', headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 400
    r = requests.post(http(processor), data=b"abc", headers={**PROTO, "Content-Encoding": "gzip"}, timeout=10)
    assert r.status_code == 400
    r = requests.post(http(processor), data=b"x", headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 415
    assert requests.post(http(processor, "/v1/nothing"), data=b"", headers=PROTO, timeout=10).status_code == 404
    # still serving, and counting what it refused
    pid = t.prediction_id()
    sender.send("logs", t.records_request(RES, [t.prediction(pid, "m", "1", label="1")]))
    assert requests.get(http(processor, "/health"), timeout=10).json()["status"] == "ok"
    rejected = {k: v for k, v in processor.counters.items() if k.startswith(semconv.PROCESSOR_REJECTED)}
    assert sum(v for k, v in rejected.items() if '"malformed"' in k) == 5
    sender.close()


def test_oversized_requests(make_processor):
    processor, _ = make_processor(serve=True, max_request_bytes=64 * 1024)
    big = t.records_request(RES, [t.prediction(t.prediction_id(), "m", "1", label="x" * 200) for _ in range(500)])
    sender = t.GrpcSender(processor.addresses["grpc"])
    with pytest.raises(grpc.RpcError) as err:
        sender.send("logs", big)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    r = requests.post(http(processor), data=big.SerializeToString(), headers=PROTO, timeout=10)
    assert r.status_code == 413 and _status(r).code == 8
    bomb = gzip.compress(b"\0" * (10 * 1024 * 1024))  # 10 KiB on the wire, 10 MiB inflated
    r = requests.post(http(processor), data=bomb, headers={**PROTO, "Content-Encoding": "gzip"}, timeout=10)
    assert r.status_code == 413
    small = t.records_request(RES, [t.prediction(t.prediction_id(), "m", "1", label="1")])
    assert requests.post(http(processor), data=small.SerializeToString(), headers=PROTO, timeout=10).ok
    sender.close()


def test_overload_pushes_back_with_retry_hints(make_processor):
    processor, _ = make_processor(serve=True, max_inflight=1, queue_wait=0.05, retry_after=3)
    sender = t.GrpcSender(processor.addresses["grpc"])
    request = t.records_request(RES, [t.prediction(t.prediction_id(), "m", "1", label="1")])
    processor.acquire()  # every slot busy
    try:
        with pytest.raises(grpc.RpcError) as err:
            sender.send("logs", request)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        details = dict(err.value.trailing_metadata())["grpc-status-details-bin"]
        status = status_pb2.Status.FromString(details)
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info) and info.retry_delay.seconds == 3
        r = requests.post(http(processor), data=request.SerializeToString(), headers=PROTO, timeout=10)
        assert r.status_code == 503 and r.headers["Retry-After"] == "3" and _status(r).code == 14
    finally:
        processor.release()
    sender.send("logs", request)  # the same request goes through once a slot is free
    assert processor.store.rows_predictions == 1
    sender.close()


def test_concurrent_clients_are_all_served_or_told_to_retry(make_processor):
    processor, _ = make_processor(serve=True, max_inflight=2, queue_wait=0.02)
    address = processor.addresses["grpc"]
    outcomes = {"ok": 0, "unavailable": 0}
    lock = threading.Lock()

    def client(k: int) -> None:
        sender = t.GrpcSender(address)
        for _ in range(10):
            records = [t.prediction(t.prediction_id(), f"m{k}", "1", label="1") for _ in range(300)]
            try:
                sender.send("logs", t.records_request(RES, records))
                key = "ok"
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                key = "unavailable"
            with lock:
                outcomes[key] += 1
        sender.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert outcomes["ok"] + outcomes["unavailable"] == 80
    assert processor.store.rows_predictions == outcomes["ok"] * 300  # acknowledged == stored


def test_health_and_status(make_processor):
    processor, _ = make_processor(serve=True)
    r = requests.get(http(processor, "/health"), timeout=10)
    assert r.status_code == 200 and r.json()["instance_id"] == processor.config.instance_id
    status = requests.get(http(processor, "/status"), timeout=10).json()
    assert status["serving"] and status["config"]["receivers.grpc.endpoint"] == processor.addresses["grpc"]
    assert requests.get(http(processor, "/nothing"), timeout=10).status_code == 404


class _Sink(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.requests: list = []

    def Export(self, request, context):  # noqa: N802 - gRPC's naming
        self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def names(self) -> set[str]:
        return {m.name for r in self.requests for rm in r.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics}


def test_exports_derived_metrics_over_otlp_and_flushes_on_shutdown(make_processor):
    sink = _Sink()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(sink, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        processor, _ = make_processor(serve=True, export_endpoint=f"127.0.0.1:{port}", export_interval=3600)
        now = time.time_ns()
        t.GrpcSender(processor.addresses["grpc"]).send("metrics", t.drift_request(
            RES, "m", "1", now - 10**9, now, counts={"age": [10, 90]}, baseline={"age": [0.5, 0.5]}))
        processor.shutdown()  # computes once more and exports before closing: nothing waits for the interval
        names = sink.names()
        assert {semconv.FLEET_DRIFT_SCORE, semconv.FLEET_DRIFT_SHARE, semconv.PROCESSOR_RECEIVED,
                semconv.PROCESSOR_STORE_ROWS} <= names
        resource = {kv.key: kv.value.string_value for kv in sink.requests[-1].resource_metrics[0].resource.attributes}
        assert resource["service.name"] == "otel-ml-processor"
        assert resource["service.instance.id"] == processor.config.instance_id
        scores = [p for r in sink.requests for rm in r.resource_metrics for sm in rm.scope_metrics
                  for m in sm.metrics if m.name == semconv.FLEET_DRIFT_SCORE for p in m.gauge.data_points]
        assert scores and all(p.as_double > 0 for p in scores)
    finally:
        server.stop(0)


def test_the_sdk_otlp_log_exporters_talk_to_it(make_processor):
    """What an instrumented app's SDK sends (gRPC and HTTP exporters, batch processor) is understood."""
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    processor, _ = make_processor(serve=True)
    ids = [t.prediction_id() for _ in range(20)]
    for exporter, kind in ((GrpcLogExporter(endpoint=processor.addresses["grpc"], insecure=True), "prediction"),
                           (HttpLogExporter(endpoint=http(processor)), "outcome")):
        provider = LoggerProvider(resource=Resource.create({"service.name": "api"}))
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
        logger = provider.get_logger("otel_ml")
        for i, pid in enumerate(ids):
            attrs = ({"ml.record.kind": kind, "ml.prediction.id": pid, "ml.model.name": "m", "ml.model.version": "1"}
                     | ({"ml.prediction.label": str(i % 2), "ml.prediction.score": 0.7} if kind == "prediction"
                        else {"ml.outcome.actual": 1}))
            logger.emit(attributes=attrs, body="record")
        provider.shutdown()
    assert processor.counters[semconv.PROCESSOR_JOINED] == 20


def test_status_body_for_json_errors_is_json(make_processor):
    processor, _ = make_processor(serve=True)
    r = requests.post(http(processor), data=b"[]", headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/json"
    assert json.loads(r.content)["code"] == 3
