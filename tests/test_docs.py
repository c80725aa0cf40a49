"""The documentation names every wire name and every variable the code defines."""

from __future__ import annotations

from pathlib import Path

from otel_ml import config, semconv

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _semconv_names() -> set[str]:
    return {v for k, v in vars(semconv).items()
            if k.isupper() and isinstance(v, str) and v.startswith(("ml.", "error."))}


def test_every_semantic_convention_name_is_documented():
    text = "".join(p.read_text() for p in DOCS.glob("*.md"))
    missing = sorted(n for n in _semconv_names() if f"`{n}`" not in text and n not in text)
    assert not missing, f"add to docs/semantic-conventions.md: {missing}"


def test_configuration_doc_is_generated_from_the_variables():
    regenerate = "python -m otel_ml.config > docs/configuration.md"
    assert (DOCS / "configuration.md").read_text() == config.markdown(), regenerate
