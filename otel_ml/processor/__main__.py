"""``python -m otel_ml.processor [--config FILE]``: run one processor instance until SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from otel_ml.processor.config import FIELDS, ProcessorConfigError, describe, load


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="otel-ml-processor",
        description="Collector-side otel-ml processor: OTLP in, fleet drift and performance out.",
        epilog="Every setting can also come from an OTEL_ML_PROCESSOR_* variable; --list-settings shows them.")
    p.add_argument("--config", "-c", help="YAML or TOML configuration file (default: $OTEL_ML_PROCESSOR_CONFIG)")
    p.add_argument("--check", action="store_true", help="validate the configuration, print it, and exit")
    p.add_argument("--list-settings", action="store_true", help="print every key, variable and default")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list_settings:
        for f in FIELDS:
            print(f"{f.key:34} {f.env:42} {f.default!r:24} {f.doc}")
        return 0
    try:
        config = load(args.config)
    except ProcessorConfigError as exc:
        print(f"otel-ml-processor: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps(describe(config), indent=2, default=str))
        return 0
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from otel_ml.processor.service import Processor

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        processor = Processor(config).start()
    except OSError as exc:
        print(f"otel-ml-processor: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"event": "started", "instance_id": config.instance_id, **processor.addresses}), flush=True)
    while not stop.wait(1.0):
        pass
    processor.shutdown()
    print(json.dumps({"event": "stopped", "instance_id": config.instance_id}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
