"""otel-ml processor: fleet-wide drift and performance with delayed labels, behind the collector.

Usage::

    python -m otel_ml.processor --config collector-config/processor/processor.yaml   # or: otel-ml-processor
    # gateway collector: load_balancing exporter, routing_key attributes [ml.model.name] -> :4717 (gRPC)
    curl -s localhost:4718/health; curl -s localhost:4718/status | jq .drift

What it does (details in ``docs/processor.md``):

* receives OTLP over gRPC (``:4717``) and HTTP (``:4718``, ``/v1/metrics``, ``/v1/logs``, ``/v1/traces``;
  protobuf or JSON; gzip): ``ml.feature.bin.count``, ``ml.baseline.bin.fraction`` and ``ml.prediction.score``
  from every replica, and prediction / outcome log records (``ml.record.kind``);
* adds the replicas' bin counters up per model, version and window (cumulative or delta, counter resets,
  replicas coming and going) and exports ``ml.fleet.drift.score`` (PSI, Jensen-Shannon) and
  ``ml.fleet.drift.share`` (:mod:`otel_ml.processor.drift`);
* joins outcomes to predictions by ``ml.prediction.id`` in an SQLite store (WAL, idempotent, restart-safe,
  bounded; :mod:`otel_ml.processor.store`) and exports realised ``ml.fleet.performance`` (accuracy, precision,
  recall, F1, ROC AUC, log loss, Brier; MAE, RMSE, R2) beside the CBPE-style
  ``ml.fleet.performance.estimated`` (:mod:`otel_ml.processor.performance`);
* exports its own health: ``ml.processor.received``, ``.rejected``, ``.dropped``, ``.joined``,
  ``.store.rows``, ``.store.size``, ``.series``, ``.lag``, ``.join.delay``;
* refuses malformed or oversized requests with the OTLP error codes, and pushes back when busy
  (gRPC ``UNAVAILABLE`` with ``RetryInfo``, HTTP 503 with ``Retry-After``) instead of queueing in memory.

Configuration: a YAML or TOML file (``--config`` or ``OTEL_ML_PROCESSOR_CONFIG``) and ``OTEL_ML_PROCESSOR_*``
variables, which win over the file; ``python -m otel_ml.processor --list-settings`` prints every key, variable
and default (:data:`otel_ml.processor.config.FIELDS`). Derived metrics go to ``export.endpoint`` over OTLP
(default: the SDK's ``OTEL_EXPORTER_OTLP_*`` variables).

Programmatic use (tests, embedding)::

    from otel_ml.processor import Processor, load_config
    processor = Processor(load_config("processor.yaml")).start()
    ...
    processor.shutdown()   # stops receiving, computes, checkpoints, exports, closes the store
"""

from otel_ml.processor.config import ProcessorConfig, ProcessorConfigError
from otel_ml.processor.config import load as load_config
from otel_ml.processor.service import Processor

__all__ = ["Processor", "ProcessorConfig", "ProcessorConfigError", "load_config"]
