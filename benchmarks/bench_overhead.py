"""Per-call overhead of otel-ml against a plain call and a bare OpenTelemetry span, side by side.

    python benchmarks/bench_overhead.py [--rounds 15] [--block-ms 150] [--json benchmarks/results/overhead.json]
    python benchmarks/bench_overhead.py --models RandomForest --rows 10000 --rounds 40 --json /tmp/rf.json

Models: LogisticRegression and RandomForestClassifier(100) fitted on scikit-learn's bundled
breast-cancer data; ``predict_proba`` on batches of 1, 100 and 10,000 rows (rows drawn with
replacement). Variants:

- ``plain``: the model call alone;
- ``bare_span``: ``tracer.start_as_current_span`` around the call: the floor any span-based
  instrumentation pays;
- ``otel_ml``: otel-ml with full telemetry (sampled span, prediction summary, metrics aggregation on
  its background thread, whose GIL time is part of what is measured);
- ``otel_ml_baseline``: the same with a baseline attached (input validation and
  drift bin counting on the aggregator thread);
- ``otel_ml_unsampled``: otel-ml when the trace is not sampled: the calls run under a parent span
  whose trace was not sampled upstream (parent-based sampling, the SDK's default), as in a service
  whose HTTP server span made the decision;
- ``otel_ml_unsampled_baseline``: unsampled, with a baseline attached (validation and drift counting
  on the aggregator thread);
- ``otel_ml_unsampled_drift``: unsampled, with a baseline and ``OTEL_ML_VALIDATION_ENABLED=false``: what
  drift and data-quality counting cost a call (they run on the aggregator thread).

How it is paired: this machine's vCPUs slow down by up to 60 % for stretches of a second or more
(another tenant; a plain forest call swings between 5.1 and 8.5 ms with nothing else running). So
each (model, batch) cell runs ``--rounds`` rounds; in a round every variant runs one short block of
calls (about ``--block-ms``), in an order shuffled from round to round (seeded), and otel-ml is instrumented and
uninstrumented around its blocks. A variant's overhead is the median over rounds of (its median call
time in the round - plain's median call time in the same round). CPU time is the process's (every
thread: otel-ml's aggregator and exporter too) per call, paired the same way.

Spans go through a ``BatchSpanProcessor`` to an exporter that discards them, the same for every
variant; metrics are exported by otel-ml's export loop (every 5 s) to an exporter that discards them.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
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
from otel_ml.baseline import Baseline
from otel_ml.instrumentation.sklearn import SklearnInstrumentor

BATCHES = (1, 100, 10_000)
VARIANTS = ("plain", "bare_span", "otel_ml", "otel_ml_baseline", "otel_ml_unsampled", "otel_ml_unsampled_baseline",
            "otel_ml_unsampled_drift")
INSTRUMENTED = VARIANTS[2:]
COLUMNS = "| plain | bare span | otel-ml | with baseline | unsampled | unsampled, baseline | unsampled, drift only |"


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


def _time_block(fn, X, calls: int, finish) -> tuple[float, float, float]:
    """(median wall-clock µs per call, process CPU µs per call, wall µs per call) over the block, the last
    two including ``finish()``: the background work the block's calls left behind."""
    times = np.empty(calls)
    cpu, wall = time.process_time_ns(), time.perf_counter_ns()
    for i in range(calls):
        t = time.perf_counter_ns()
        fn(X)
        times[i] = time.perf_counter_ns() - t
    finish()
    cpu, wall = time.process_time_ns() - cpu, time.perf_counter_ns() - wall
    return float(np.median(times)) / 1000.0, cpu / calls / 1000.0, wall / calls / 1000.0


class Bench:
    def __init__(self, block_seconds: float) -> None:
        X, y = load_breast_cancer(return_X_y=True)
        rng = np.random.default_rng(0)
        self.batches = {n: X[rng.integers(0, len(X), size=n)] for n in BATCHES}
        self.models = {
            "LogisticRegression": LogisticRegression(max_iter=5000).fit(X, y),
            "RandomForestClassifier(100)": RandomForestClassifier(n_estimators=100, random_state=0).fit(X, y),
        }
        self.baseline = Baseline().fit(X)
        self.sampled, self.unsampled = _provider(ALWAYS_ON), _provider(ParentBased(ALWAYS_ON))
        self.unsampled_parent = trace.set_span_in_context(NonRecordingSpan(SpanContext(
            trace_id=0x5B8EFFF798038103D269B633813FC60C, span_id=0xEEE19B7EC3C1B174, is_remote=True,
            trace_flags=TraceFlags(TraceFlags.DEFAULT))))
        self.tracer = self.sampled.get_tracer("bench")
        self.instrumentor = SklearnInstrumentor()
        self.config = config.load({})
        self.config_drift_only = config.load({"OTEL_ML_VALIDATION_ENABLED": "false"})
        self.block_seconds = block_seconds

    def block(self, variant: str, model, X, calls: int) -> tuple[float, float]:
        """One block of ``calls`` calls of ``variant``, instrumented around it when it is otel-ml's."""
        unsampled = variant.startswith("otel_ml_unsampled")
        if variant in INSTRUMENTED:
            self.instrumentor.instrument(
                tracer_provider=self.unsampled if unsampled else self.sampled, metric_exporter=DiscardMetrics(),
                config=self.config_drift_only if variant == "otel_ml_unsampled_drift" else self.config,
                export_interval=5)
            if variant.endswith(("baseline", "drift")):
                telemetry = self.instrumentor.telemetry
                telemetry.aggregator.use_baseline(telemetry.states.get(model), self.baseline)
        token = context.attach(self.unsampled_parent) if unsampled else None
        try:
            if variant == "bare_span":
                tracer = self.tracer

                def fn(batch):
                    with tracer.start_as_current_span("predict_proba"):
                        return model.predict_proba(batch)
            else:
                fn = model.predict_proba
            telemetry = self.instrumentor.telemetry

            def finish():  # what the calls left to otel-ml's aggregator thread and to the span processor
                if telemetry is not None:
                    telemetry.aggregator.drain()
                self.sampled.force_flush()

            for _ in range(3):
                fn(X)  # warm: the model's state, the span processor, caches
            finish()
            return _time_block(fn, X, calls, finish)
        finally:
            if token is not None:
                context.detach(token)
            if variant in INSTRUMENTED:
                self.instrumentor.uninstrument()

    def cell(self, name: str, n: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
        model, X = self.models[name], self.batches[n]
        model.predict_proba(X)
        start = time.perf_counter()
        for _ in range(5):
            model.predict_proba(X)
        per_call = (time.perf_counter() - start) / 5
        calls = max(7, int(self.block_seconds / per_call))
        results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        order = random.Random(f"{name}/{n}")
        for _ in range(rounds):
            for variant in order.sample(VARIANTS, len(VARIANTS)):  # no variant always follows the same one
                results[variant].append(self.block(variant, model, X, calls))
        return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block-ms", type=float, default=150.0, help="length of one variant's block of calls")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "overhead.json")
    parser.add_argument("--quick", action="store_true", help="3 rounds of short blocks (smoke run)")
    parser.add_argument("--models", default="", help="only models whose name starts with one of these (comma list)")
    parser.add_argument("--rows", default="", help="only these batch sizes (comma list)")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    bench = Bench((20.0 if args.quick else args.block_ms) / 1000.0)
    models = [m for m in bench.models if not args.models or m.startswith(tuple(args.models.split(",")))]
    batches = [n for n in BATCHES if not args.rows or str(n) in args.rows.split(",")]
    results = {name: {n: bench.cell(name, n, rounds) for n in batches} for name in models}
    report = _report(results)
    report["environment"] = {
        "python": platform.python_version(), "sklearn": sklearn.__version__, "numpy": np.__version__,
        "machine": platform.machine(), "rounds": rounds, "block_ms": args.block_ms,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(_markdown(report))
    return report


def _paired(by_variant: dict[str, list[tuple[float, ...]]], variant: str, which: int) -> float:
    """Median over rounds of (variant - plain) within each round; ``which``: 0 median call (latency),
    1 CPU per call, 2 wall time per call (throughput), both with the background work."""
    return statistics.median(v[which] - p[which] for v, p in zip(by_variant[variant], by_variant["plain"]))


def _report(results) -> dict:
    out: dict = {"unit": "microseconds per call; overhead = median over rounds of (variant - plain) in the round; "
                         "wall = median call time in a block (latency), cpu = process CPU time per call and "
                         "block = wall time per call of a block (throughput), both with the background work "
                         "its calls left (drained at the block's end)",
                 "models": {}}
    for model, by_batch in results.items():
        out["models"][model] = {}
        for n, by_variant in by_batch.items():
            plain = statistics.median(v[0] for v in by_variant["plain"])
            row: dict = {"plain_us": round(plain, 2),
                         "plain_cpu_us": round(statistics.median(v[1] for v in by_variant["plain"]), 2),
                         "plain_block_us": round(statistics.median(v[2] for v in by_variant["plain"]), 2)}
            bare = _paired(by_variant, "bare_span", 0)
            for variant in VARIANTS[1:]:
                wall, cpu = _paired(by_variant, variant, 0), _paired(by_variant, variant, 1)
                row[f"{variant}_overhead_us"] = round(wall, 2)
                row[f"{variant}_cpu_overhead_us"] = round(cpu, 2)
                row[f"{variant}_block_overhead_us"] = round(_paired(by_variant, variant, 2), 2)
                row[f"{variant}_overhead_pct_of_plain"] = round(100 * wall / plain, 2)
                if variant != "bare_span":
                    row[f"{variant}_overhead_vs_bare_span"] = round(wall / bare, 2) if bare > 0 else None
            out["models"][model][str(n)] = row
    return out


def _markdown(report: dict) -> str:
    lines = ["Wall clock (µs per call; overhead over plain, paired by round, and as a multiple of the bare span's):",
             "", "| model | rows | plain µs | bare span +µs | otel-ml +µs (x bare) | with baseline +µs (x bare) "
             "| unsampled +µs | unsampled, baseline +µs | unsampled, drift only +µs | otel-ml % of plain |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, by_batch in report["models"].items():
        for n, r in by_batch.items():
            lines.append(
                f"| {model} | {n} | {r['plain_us']:.1f} | {r['bare_span_overhead_us']:.1f} "
                f"| {r['otel_ml_overhead_us']:.1f} ({r['otel_ml_overhead_vs_bare_span']}) "
                f"| {r['otel_ml_baseline_overhead_us']:.1f} ({r['otel_ml_baseline_overhead_vs_bare_span']}) "
                f"| {r['otel_ml_unsampled_overhead_us']:.1f} | {r['otel_ml_unsampled_baseline_overhead_us']:.1f} "
                f"| {r['otel_ml_unsampled_drift_overhead_us']:.1f} | {r['otel_ml_overhead_pct_of_plain']:.1f} |")
    lines += _paired_table(report, "block", "Wall time of a block per call, with the background work its calls "
                           "left (throughput cost; overhead over plain, paired by round):")
    lines += _paired_table(report, "cpu", "Process CPU time (µs per call, all threads, with the background work; "
                           "overhead over plain, paired by round):")
    return "\n".join(lines)


def _paired_table(report: dict, figure: str, title: str) -> list[str]:
    """Markdown lines of one per-call figure (``block`` or ``cpu``): plain's value, every variant's overhead."""
    lines = ["", title, "", "| model | rows " + COLUMNS, "|---|---:" + "|---:" * len(VARIANTS) + "|"]
    for model, by_batch in report["models"].items():
        for n, r in by_batch.items():
            overheads = " | ".join(f"{r[f'{v}_{figure}_overhead_us']:+.1f}" for v in VARIANTS[1:])
            lines.append(f"| {model} | {n} | {r[f'plain_{figure}_us']:.1f} | {overheads} |")
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
