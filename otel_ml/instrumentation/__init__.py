"""Instrumentors loaded by ``opentelemetry-instrument`` through the ``opentelemetry_instrumentor`` entry point."""
