"""Fixtures for the processor: instances on loopback ports 4640-4699, in-memory metric readers, helpers."""

from __future__ import annotations

import random
import socket
from dataclasses import replace
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_ml.processor import Processor
from otel_ml.processor.config import ProcessorConfig

PORT_RANGE = (4640, 4699)  # the processor tests' share of 4600-4699 (the stack uses 4317/4318, 4417/4418, ...)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port in PORT_RANGE nobody listens on (bind-tested, TCP), never the same twice in a session (a port
    handed out but not bound yet would pass the bind test again). Cycles when the range is used up."""
    ports = [p for p in range(*PORT_RANGE) if p not in _HANDED_OUT]
    if not ports:
        _HANDED_OUT.clear()
        ports = list(range(*PORT_RANGE))
    random.shuffle(ports)
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


def exported(reader: InMemoryMetricReader, name: str) -> list[tuple[dict, Any]]:
    """(attributes, point) of every point of ``name`` in a fresh collection."""
    data = reader.get_metrics_data()
    out = []
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    out.extend((dict(p.attributes), p) for p in m.data.data_points)
    return out


@pytest.fixture
def make_processor(tmp_path):
    """``make_processor(serve=False, **config_overrides)`` -> (processor, reader); shut down at teardown."""
    made: list[Processor] = []

    def factory(serve: bool = False, clock: Any = None, **overrides: Any) -> tuple[Processor, InMemoryMetricReader]:
        base = ProcessorConfig(grpc_endpoint=None, http_endpoint=None, export_endpoint="none",
                               store_path=str(tmp_path / f"processor-{len(made)}.db"), drift_min_rows=1,
                               compute_interval=3600)
        if serve:
            base = replace(base, grpc_endpoint=f"127.0.0.1:{free_port()}", http_endpoint=f"127.0.0.1:{free_port()}")
        cfg = replace(base, **overrides)
        reader = InMemoryMetricReader()
        kwargs = {"clock": clock} if clock is not None else {}
        processor = Processor(cfg, metric_readers=[reader], **kwargs).start(serve=serve)
        made.append(processor)
        return processor, reader

    yield factory
    for p in made:
        p.shutdown(grace=1)
