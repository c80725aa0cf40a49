"""What the calls otel-ml holds until its aggregator thread drains them cost in garbage collection.

    python benchmarks/bench_flask_gc.py [--requests 1000] [--scenarios credit,small]

A model call's observation (its inputs included) waits in the aggregator's queue until the thread
drains it, after 256 calls with spans by default (``otel_ml/aggregator.py``). A numpy row is copied
into one array, which the garbage collector does not track; a one-row pandas DataFrame brings
hundreds of tracked objects (blocks, arrays, pandas' copy-on-write references). Held over many requests
they outlive a collection of the interpreter's middle generation and reach its oldest, whose full
collections, each over every tracked object of the process, then run more often.

Each variant answers ``--requests`` requests of ``bench_flask.py``'s app through its WSGI callable
(as ``bench_flask_wsgi.py`` does), in a process of its own, after 100 to warm up. Figures per request:
median and mean wall time, process CPU (every thread), time inside the garbage collector (``gc.callbacks``),
the collections of each generation over the run, and, counted over half as many requests more, the
objects promoted to the oldest generation (a count, steadier than the times: full collections come as
often as objects get there). Variants: ``flask`` (the Flask instrumentation
alone), ``otel_ml`` (all of otel-ml, defaults), ``otel_ml_wake_8`` and ``otel_ml_wake_1`` (the
aggregator thread woken after 8 calls with spans, or after each).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {"flask": None, "otel_ml": 256, "otel_ml_wake_8": 8, "otel_ml_wake_1": 1}  # -> WAKE_SPANS


def measure(scenario_name: str, variant: str, requests: int) -> dict:
    """One variant's figures, in this process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_flask_wsgi as bench_module
    from bench_overhead import DiscardMetrics

    import otel_ml.aggregator

    bench = bench_module.Bench()
    scenario = bench_module.prepare(Path(tempfile.mkdtemp()))[scenario_name]
    request = bench_module.requester(bench_module.load_app(scenario), Path(scenario["body"]).read_bytes())
    wake_spans = VARIANTS[variant]
    if wake_spans is not None:
        otel_ml.aggregator.WAKE_SPANS = wake_spans
        bench.sklearn.instrument(tracer_provider=bench.provider, metric_exporter=DiscardMetrics(),
                                 config=bench.config, export_interval=3600)
        bench.flask_ml.instrument(config=bench.config)
    for _ in range(100):
        request()
    in_gc, collections, started = [0], [0, 0, 0], [0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter_ns()
        else:
            in_gc[0] += time.perf_counter_ns() - started[0]
            collections[info["generation"]] += 1

    times = []
    gc.callbacks.append(on_gc)
    cpu = time.process_time_ns()
    for _ in range(requests):
        start = time.perf_counter_ns()
        request()
        times.append(time.perf_counter_ns() - start)
    cpu = time.process_time_ns() - cpu
    gc.callbacks.remove(on_gc)
    tracked = len(gc.get_objects())
    return {"median_us": round(statistics.median(times) / 1e3, 1), "mean_us": round(statistics.mean(times) / 1e3, 1),
            "cpu_us": round(cpu / requests / 1e3, 1), "gc_us": round(in_gc[0] / requests / 1e3, 1),
            "collections": collections, "tracked_objects_at_end": tracked,
            "promoted_per_request": promoted(request, max(requests // 2, 200))}


def promoted(request, requests: int) -> float:
    """Objects that reach the oldest generation per request: what makes full collections come sooner
    (one runs when the objects promoted since the last reach a quarter of those it kept). Counted at
    each middle-generation collection, with everything older frozen out of the way."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], 10**9)  # no full collection while counting
    count, before = [0], [set()]

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] != 1:
            return
        if phase == "start":
            before[0] = {id(o) for o in gc.get_objects(generation=2)}
        else:
            count[0] += sum(id(o) not in before[0] for o in gc.get_objects(generation=2))

    gc.callbacks.append(on_gc)
    try:
        for _ in range(requests):
            request()
    finally:
        gc.callbacks.remove(on_gc)
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    return round(count[0] / requests, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--scenarios", default="credit,small")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "flask_gc.json")
    parser.add_argument("--one", nargs=2, metavar=("SCENARIO", "VARIANT"), help=argparse.SUPPRESS)  # a child
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(*args.one, args.requests)))
        return
    results: dict = {"requests": args.requests, "scenarios": {}}
    print(f"{args.requests} requests per variant, in process; µs per request; collections per generation")
    for name in args.scenarios.split(","):
        print(f"{name}:\n    {'variant':<16} {'median':>8} {'mean':>8} {'CPU':>8} {'in GC':>8} {'promoted':>9}"
              "  collections")
        results["scenarios"][name] = {}
        for variant in VARIANTS:
            child = subprocess.run([sys.executable, __file__, "--one", name, variant, "--requests", str(args.requests)],
                                   check=True, capture_output=True, text=True)
            r = results["scenarios"][name][variant] = json.loads(child.stdout.splitlines()[-1])
            print(f"    {variant:<16} {r['median_us']:8.0f} {r['mean_us']:8.0f} {r['cpu_us']:8.0f} {r['gc_us']:8.1f}"
                  f" {r['promoted_per_request']:9.1f}  {r['collections']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
