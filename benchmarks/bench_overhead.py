"""Per-call overhead of otel-ml against a plain call and a bare OpenTelemetry span, side by side.

    python benchmarks/bench_overhead.py [--rounds 7] [--json benchmarks/results/overhead.json]

Models: LogisticRegression and RandomForestClassifier(100) fitted on scikit-learn's bundled
breast-cancer data; ``predict_proba`` on batches of 1, 100 and 10,000 rows (rows drawn with
replacement). Variants, interleaved round by round in one process:

- ``plain``: the model call alone;
- ``bare_span``: ``tracer.start_as_current_span`` around the call: the floor any span-based
  instrumentation pays;
- ``otel_ml``: otel-ml with full telemetry (sampled span, prediction summary, metrics aggregation on
  its background thread, whose GIL time is part of what is measured);
- ``otel_ml_baseline``: the same with a baseline attached (input validation on the request path,
  drift bin counting on the aggregator thread);
- ``otel_ml_unsampled``: otel-ml when the trace is not sampled: the calls run under a parent span
  whose trace was not sampled upstream (parent-based sampling, the SDK's default), as in a service
  whose HTTP server span made the decision.

Spans go through a ``BatchSpanProcessor`` to an exporter that discards them, the same for every
variant; metrics are exported by otel-ml's export loop to an exporter that discards them. Each
figure is the median over rounds of the median per-call time within a round.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from otel_ml import config
from otel_ml.instrumentation.sklearn import SklearnInstrumentor

BATCHES = (1, 100, 10_000)
CALLS = {1: 3000, 100: 600, 10_000: 20}  # per round and variant; the forest's big batch gets fewer


class DiscardSpans(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS


class DiscardMetrics:
    def export(self, data, timeout_millis=0, **_):
        return None


def _provider(sampler) -> TracerProvider:
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(DiscardSpans(), max_queue_size=65536))
    return provider


def _time_calls(fn, X, calls: int) -> tuple[float, float]:
    """(median wall-clock µs per call, process CPU µs per call: every thread, so otel-ml's aggregator too)."""
    times = np.empty(calls)
    cpu = time.process_time_ns()
    for i in range(calls):
        t = time.perf_counter_ns()
        fn(X)
        times[i] = time.perf_counter_ns() - t
    cpu = time.process_time_ns() - cpu
    return float(np.median(times)) / 1000.0, cpu / calls / 1000.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "overhead.json")
    parser.add_argument("--quick", action="store_true", help="fewer calls (smoke run)")
    args = parser.parse_args(argv)

    X, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    batches = {n: X[rng.integers(0, len(X), size=n)] for n in BATCHES}
    models = {
        "LogisticRegression": LogisticRegression(max_iter=5000).fit(X, y),
        "RandomForestClassifier(100)": RandomForestClassifier(n_estimators=100, random_state=0).fit(X, y),
    }
    baseline = _baseline(X, models)
    sampled, unsampled = _provider(ALWAYS_ON), _provider(ParentBased(ALWAYS_ON))
    unsampled_parent = trace.set_span_in_context(NonRecordingSpan(SpanContext(
        trace_id=0x5B8EFFF798038103D269B633813FC60C, span_id=0xEEE19B7EC3C1B174, is_remote=True,
        trace_flags=TraceFlags(TraceFlags.DEFAULT))))
    tracer = sampled.get_tracer("bench")
    instrumentor = SklearnInstrumentor()
    cfg = config.load({})

    def bare(model):
        def call(batch):
            with tracer.start_as_current_span("predict_proba"):
                return model.predict_proba(batch)
        return call

    variants = ("plain", "bare_span", "otel_ml", "otel_ml_baseline", "otel_ml_unsampled")
    results: dict[str, dict[int, dict[str, list[tuple[float, float]]]]] = {
        m: {n: {v: [] for v in variants} for n in BATCHES} for m in models}
    rounds = 2 if args.quick else args.rounds
    for _ in range(rounds):
        for variant in variants:
            if variant.startswith("otel_ml"):
                instrumentor.instrument(tracer_provider=unsampled if variant.endswith("unsampled") else sampled,
                                        metric_exporter=DiscardMetrics(), config=cfg, export_interval=5)
                if variant == "otel_ml_baseline":
                    for model in models.values():
                        _attach(instrumentor, model, baseline)
            token = context.attach(unsampled_parent) if variant == "otel_ml_unsampled" else None
            for name, model in models.items():
                fn = bare(model) if variant == "bare_span" else model.predict_proba
                for n in BATCHES:
                    calls = CALLS[n] // (10 if args.quick else 1)
                    if name.startswith("Random") and n == 1:
                        calls //= 3
                    fn(batches[n])  # warm
                    results[name][n][variant].append(_time_calls(fn, batches[n], max(calls, 5)))
            if token is not None:
                context.detach(token)
            if variant.startswith("otel_ml"):
                instrumentor.uninstrument()
    report = _report(results)
    report["environment"] = {
        "python": platform.python_version(), "sklearn": sklearn.__version__, "numpy": np.__version__,
        "machine": platform.machine(), "rounds": rounds,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(_markdown(report))
    return report


def _baseline(X, models):
    from otel_ml.baseline import Baseline

    return Baseline().fit(X)


def _attach(instrumentor, model, baseline) -> None:
    telemetry = instrumentor.telemetry
    state = telemetry.states.get(model)
    telemetry.aggregator.use_baseline(state, baseline)


def _report(results) -> dict:
    out: dict = {"unit": "microseconds per call: wall = median over rounds of the per-round median; "
                         "cpu = median over rounds of process CPU time per call", "models": {}, "cpu": {}}
    for model, by_batch in results.items():
        out["models"][model] = {}
        out["cpu"][model] = {}
        for n, by_variant in by_batch.items():
            cpu = {v: statistics.median(c for _, c in times) for v, times in by_variant.items()}
            out["cpu"][model][str(n)] = {f"{v}_us": round(t, 2) for v, t in cpu.items()} | {
                f"{v}_overhead_us": round(cpu[v] - cpu["plain"], 2) for v in by_variant if v != "plain"}
            med = {v: statistics.median(w for w, _ in times) for v, times in by_variant.items()}
            plain = med["plain"]
            row = {f"{v}_us": round(t, 2) for v, t in med.items()}
            bare_overhead = med["bare_span"] - plain
            row["bare_span_overhead_us"] = round(bare_overhead, 2)
            for v in ("otel_ml", "otel_ml_baseline", "otel_ml_unsampled"):
                overhead = med[v] - plain
                row[f"{v}_overhead_us"] = round(overhead, 2)
                row[f"{v}_overhead_pct_of_plain"] = round(100 * overhead / plain, 2)
                row[f"{v}_overhead_vs_bare_span"] = round(overhead / bare_overhead, 2) if bare_overhead > 0 else None
            out["models"][model][str(n)] = row
    return out


def _markdown(report: dict) -> str:
    lines = ["Wall clock (median µs per call; overhead over plain, and as a multiple of the bare span's):", "",
             "| model | rows | plain µs | bare span +µs | otel-ml +µs (x bare) | with baseline +µs (x bare) "
             "| unsampled +µs | otel-ml % of plain |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model, by_batch in report["models"].items():
        for n, r in by_batch.items():
            lines.append(
                f"| {model} | {n} | {r['plain_us']:.1f} | {r['bare_span_overhead_us']:.1f} "
                f"| {r['otel_ml_overhead_us']:.1f} ({r['otel_ml_overhead_vs_bare_span']}) "
                f"| {r['otel_ml_baseline_overhead_us']:.1f} ({r['otel_ml_baseline_overhead_vs_bare_span']}) "
                f"| {r['otel_ml_unsampled_overhead_us']:.1f} | {r['otel_ml_overhead_pct_of_plain']:.1f} |")
    lines += ["", "Process CPU time (µs per call, all threads; overhead over plain):", "",
              "| model | rows | plain | bare span | otel-ml | with baseline | unsampled |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for model, by_batch in report["cpu"].items():
        for n, r in by_batch.items():
            lines.append(f"| {model} | {n} | {r['plain_us']:.1f} | +{r['bare_span_overhead_us']:.1f} "
                         f"| +{r['otel_ml_overhead_us']:.1f} | +{r['otel_ml_baseline_overhead_us']:.1f} "
                         f"| +{r['otel_ml_unsampled_overhead_us']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
