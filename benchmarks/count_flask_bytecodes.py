"""What one warm Flask predict request executes, counted instead of timed: Python bytecodes per function.

    python benchmarks/count_flask_bytecodes.py [--top 25]

Timers on this shared machine move by more than the differences worth knowing (a few µs); a bytecode
count does not move at all from run to run. Each variant of ``bench_flask_wsgi.py`` (``flask``: only
``opentelemetry-instrumentation-flask``; ``flask_sklearn``: + otel-ml's scikit-learn instrumentor;
``otel_ml``: + its Flask layer) answers 50 requests of the ``small`` scenario in a process of its own,
then one more under ``sys.settrace`` with opcode events, which counts the bytecodes of every Python
function it runs (C code, numpy's included, counts as the one call that reaches it). Prints the totals
and, for each step, the functions whose counts changed most. Background threads are kept idle (they
are not traced anyway).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STEPS = (("flask", "flask_sklearn"), ("flask_sklearn", "otel_ml"))
ROOT = str(Path(__file__).resolve().parents[1]) + "/"


def count(variant: str) -> dict[str, int]:
    """Bytecodes per ``file:function`` of one warm request of ``variant`` (run in this process)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_flask_wsgi as bench_module
    from bench_overhead import DiscardMetrics

    import otel_ml.aggregator

    bench = bench_module.Bench()
    scenario = bench_module.prepare(Path(tempfile.mkdtemp()))["small"]
    request = bench_module.requester(bench_module.load_app(scenario), Path(scenario["body"]).read_bytes())
    if variant != "flask":
        bench.sklearn.instrument(tracer_provider=bench.provider, metric_exporter=DiscardMetrics(),
                                 config=bench.config, export_interval=3600)
    if variant in bench_module.FLASK_ML:
        bench.flask_ml.instrument(config=bench.configs[variant])
    otel_ml.aggregator.WAKE_EVERY = otel_ml.aggregator.WAKE_SPANS = 10**9  # no drain while counting
    for _ in range(50):
        request()
    counts: collections.Counter[str] = collections.Counter()

    def trace(frame, event, arg):  # noqa: ANN001, ANN202
        frame.f_trace_opcodes = True
        code = frame.f_code
        key = f"{code.co_filename.split('site-packages/')[-1].removeprefix(ROOT)}:{code.co_name}"

        def opcode(frame, event, arg):  # noqa: ANN001, ANN202
            if event == "opcode":
                counts[key] += 1
            return opcode

        return opcode

    sys.settrace(trace)
    try:
        request()
    finally:
        sys.settrace(None)
    return dict(counts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=25, help="functions shown per step")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # the child process's part
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(count(args.variant)))
        return
    counts = {}
    for variant in ("flask", "flask_sklearn", "otel_ml"):
        child = subprocess.run([sys.executable, __file__, "--variant", variant], check=True, capture_output=True,
                               text=True)
        counts[variant] = collections.Counter(json.loads(child.stdout.splitlines()[-1]))
    for variant, c in counts.items():
        print(f"{variant:<14} {sum(c.values()):6d} bytecodes per request")
    for before, after in STEPS:
        change = collections.Counter(counts[after])
        change.subtract(counts[before])
        print(f"\n{before} -> {after}: {sum(change.values()):+d}")
        for key, n in sorted(change.items(), key=lambda kv: -abs(kv[1]))[: args.top]:
            if n:
                print(f"  {n:+6d}  {key}")


if __name__ == "__main__":
    main()
