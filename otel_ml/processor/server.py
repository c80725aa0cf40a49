"""OTLP receivers: gRPC (``MetricsService``, ``LogsService``, ``TraceService``) and HTTP (``/v1/metrics``,
``/v1/logs``, ``/v1/traces``, protobuf or JSON, gzip or deflate), plus ``GET /health`` and ``GET /status``.

Errors follow the OTLP specification so that a collector retries what is worth retrying and drops the rest:

=======================  ===============================  ==========================================
situation                gRPC status                      HTTP
=======================  ===============================  ==========================================
body not OTLP            ``INVALID_ARGUMENT``             400, ``google.rpc.Status`` body
request too large        ``RESOURCE_EXHAUSTED``           413, ``Status`` body
unsupported media type   (n/a)                            415, ``Status`` body
no slot (overload)       ``UNAVAILABLE`` + ``RetryInfo``  503 + ``Retry-After``, ``Status`` body
shutting down            ``UNAVAILABLE`` + ``RetryInfo``  503 + ``Retry-After``
some items invalid       OK + ``partial_success``         200 + ``partial_success``
=======================  ===============================  ==========================================

The ``Status`` body has the request's content type (protobuf or JSON). Requests are limited to
``receivers.max_request_bytes`` after decompression; an HTTP request announcing more is refused before its
body is read.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from otel_ml.processor import otlp
from otel_ml.processor.service import OverloadedError, Processor, StoppingError

_log = logging.getLogger("otel_ml.processor")

GRPC_SERVICES = {
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
}
HTTP_PATHS = {"/v1/metrics": "metrics", "/v1/logs": "logs", "/v1/traces": "traces"}


class _Status(NamedTuple):  # implements grpc.Status for abort_with_status
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple


def _retry_status(message: str, retry_after: float) -> _Status:
    delay = duration_pb2.Duration(seconds=int(retry_after), nanos=int((retry_after % 1) * 1e9))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[detail])
    return _Status(grpc.StatusCode.UNAVAILABLE, message, (("grpc-status-details-bin", status.SerializeToString()),))


class GrpcReceiver:
    kind = "grpc"

    def __init__(self, processor: Processor, endpoint: str) -> None:
        self.processor = processor
        cfg = processor.config
        workers = cfg.max_inflight + 8  # the extra workers answer UNAVAILABLE quickly when all slots are busy
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otel-ml-processor-grpc"),
            maximum_concurrent_rpcs=workers * 2,
            options=[("grpc.max_receive_message_length", cfg.max_request_bytes),
                     ("grpc.max_send_message_length", 4 * 1024 * 1024)])
        handlers = [grpc.method_handlers_generic_handler(service, {
            "Export": grpc.unary_unary_rpc_method_handler(self._export(signal))})
            for signal, service in GRPC_SERVICES.items()]
        self._server.add_generic_rpc_handlers(handlers)
        port = self._server.add_insecure_port(endpoint)
        if port == 0:
            raise OSError(f"cannot listen on {endpoint} (gRPC)")
        self.address = f"{endpoint.rsplit(':', 1)[0]}:{port}"

    def start(self) -> GrpcReceiver:
        self._server.start()
        return self

    def stop(self, grace: float) -> None:
        self._server.stop(grace).wait(grace + 1)

    def _export(self, signal: str):
        processor = self.processor

        def export(raw: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                processor.acquire()
            except (OverloadedError, StoppingError) as exc:
                processor.reject(signal, "overloaded" if isinstance(exc, OverloadedError) else "stopping")
                context.abort_with_status(_retry_status(str(exc), processor.config.retry_after))
            try:
                try:
                    request = otlp.decode(signal, raw)
                except otlp.MalformedRequestError as exc:
                    processor.reject(signal, "malformed")
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                rejected, message = processor.ingest(signal, request)
                return otlp.encode_response(signal, rejected, message)
            finally:
                processor.release()

        return export


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, processor: Processor) -> None:
        self.processor = processor
        self.connections = threading.BoundedSemaphore(processor.config.max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.acquire(blocking=False):
            self.processor.reject("http", "too_many_connections")
            try:
                body = otlp.encode_status(code_pb2.UNAVAILABLE, "too many connections", json_body=True)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: %d\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                                % (math.ceil(self.processor.config.retry_after), len(body), body))
            finally:
                self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    server_version = "otel-ml-processor"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        _log.debug("http: " + format, *args)

    # -- responses ----------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: int, message: str, json_body: bool, headers: dict | None = None) -> None:
        body = otlp.encode_status(code, message, json_body)
        self._send(status, body, "application/json" if json_body else "application/x-protobuf", headers)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc, default=str).encode(), "application/json")

    # -- GET ----------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        processor = self.server.processor
        path = self.path.split("?", 1)[0]
        if path in ("/health", "/healthz", "/"):
            ok = processor.serving
            self._json(200 if ok else 503, {"status": "ok" if ok else "stopping",
                                            "instance_id": processor.config.instance_id})
        elif path == "/status":
            self._json(200, processor.status())
        else:
            self._json(404, {"error": f"no such path {path}; try /health, /status or POST /v1/metrics|logs|traces"})

    # -- POST ---------------------------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802
        processor = self.server.processor
        cfg = processor.config
        path = self.path.split("?", 1)[0]
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        json_body = ctype == "application/json"
        signal = HTTP_PATHS.get(path)
        if signal is None:
            self.close_connection = True
            return self._error(404, code_pb2.NOT_FOUND, f"no OTLP endpoint at {path}", json_body)
        if ctype not in ("application/x-protobuf", "application/json"):
            self.close_connection = True
            processor.reject(signal, "unsupported_media_type")
            return self._error(415, code_pb2.INVALID_ARGUMENT,
                               f"Content-Type {ctype or '(none)'} not supported: application/x-protobuf or "
                               "application/json", False)
        length = self.headers.get("Content-Length")
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        try:
            length = int(length) if length is not None else None
        except ValueError:
            length = -1
        if (length is None and not chunked) or (length is not None and length < 0):
            self.close_connection = True
            processor.reject(signal, "malformed")
            return self._error(411 if length is None else 400, code_pb2.INVALID_ARGUMENT,
                               "Content-Length (or chunked transfer encoding) required", json_body)
        if length is not None and length > cfg.max_request_bytes:
            self.close_connection = True
            processor.reject(signal, "too_large")
            return self._error(413, code_pb2.RESOURCE_EXHAUSTED,
                               f"request of {length} bytes exceeds {cfg.max_request_bytes}", json_body)
        try:
            processor.acquire()
        except (OverloadedError, StoppingError) as exc:
            self.close_connection = True
            processor.reject(signal, "overloaded" if isinstance(exc, OverloadedError) else "stopping")
            return self._error(503, code_pb2.UNAVAILABLE, str(exc), json_body,
                               {"Retry-After": str(math.ceil(cfg.retry_after))})
        try:
            try:
                body = self._read_chunked(cfg.max_request_bytes) if length is None else self.rfile.read(length)
                body = otlp.decompress(body, self.headers.get("Content-Encoding"), cfg.max_request_bytes)
                request = otlp.decode(signal, body, json_body)
            except otlp.RequestTooLargeError as exc:
                self.close_connection = True
                processor.reject(signal, "too_large")
                return self._error(413, code_pb2.RESOURCE_EXHAUSTED, str(exc), json_body)
            except otlp.MalformedRequestError as exc:
                processor.reject(signal, "malformed")
                return self._error(400, code_pb2.INVALID_ARGUMENT, str(exc), json_body)
            rejected, message = processor.ingest(signal, request)
            body = otlp.encode_response(signal, rejected, message, json_body)
            self._send(200, body, "application/json" if json_body else "application/x-protobuf")
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # never let a bad request take the receiver down
            _log.exception("otel-ml processor: HTTP %s failed", path)
            self.close_connection = True
            self._error(500, code_pb2.INTERNAL, f"internal error: {type(exc).__name__}", json_body)
        finally:
            processor.release()

    def _read_chunked(self, limit: int) -> bytes:
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise otlp.MalformedRequestError("bad chunked encoding") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > limit:
                raise otlp.RequestTooLargeError(f"chunked body exceeds {limit} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)


class HttpReceiver:
    kind = "http"

    def __init__(self, processor: Processor, endpoint: str) -> None:
        host, _, port = endpoint.rpartition(":")
        self._server = _HTTPServer((host or "0.0.0.0", int(port)), _Handler, processor)
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otel-ml-processor-http",
                                        kwargs={"poll_interval": 0.2}, daemon=True)

    def start(self) -> HttpReceiver:
        self._thread.start()
        return self

    def stop(self, grace: float) -> None:
        self._server.shutdown()
        self._server.server_close()

