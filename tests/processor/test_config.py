"""Configuration: file (YAML, TOML) + variables, validation messages, and the documentation table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from otel_ml import semconv
from otel_ml.processor.config import FIELDS, ProcessorConfigError, load

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "processor.md"


def test_yaml_file_with_env_substitution_and_variables_winning(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("""
receivers:
  grpc: {endpoint: "127.0.0.1:${env:PORT:-4999}"}
drift:
  windows: [30m, 2h]
  slot: 1m
  thresholds: {psi: 0.2}
performance:
  horizon: 90d
  baselines: {churn: /models/churn.baseline.json}
export:
  headers: {x-tenant: a}
""")
    cfg = load(path, env={"PORT": "4650", "OTEL_ML_PROCESSOR_PERFORMANCE_HORIZON": "7d"})
    assert cfg.grpc_endpoint == "127.0.0.1:4650"
    assert cfg.drift_windows == (1800.0, 7200.0) and cfg.drift_slot == 60.0 and cfg.threshold_psi == 0.2
    assert cfg.horizon == 7 * 86400.0  # the variable wins over the file
    assert cfg.baselines == {"churn": "/models/churn.baseline.json"} and cfg.export_headers == {"x-tenant": "a"}


def test_the_shipped_toml_config_loads():
    cfg = load(ROOT / "collector-config" / "processor" / "processor.toml", env={})
    assert cfg.grpc_endpoint == "127.0.0.1:4717" and cfg.export_endpoint == "127.0.0.1:4819"
    assert cfg.performance_windows == (86400.0, 7 * 86400.0) and cfg.horizon == 30 * 86400.0


@pytest.mark.parametrize("text,message", [
    ("drift:\n  windows: [7m]\n  slot: 5m\n", "not a multiple of drift.slot"),
    ("limits:\n  max_inflight_requests: 0\n", "limits.max_inflight_requests"),
    ("store:\n  synchronous: sometimes\n", "store.synchronous"),
    ("drift:\n  methods: [ks]\n", "drift.methods"),
    ("nonsense: 1\n", "unknown key 'nonsense'"),
    ("- a list\n", "mapping at the top level"),
])
def test_errors_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ProcessorConfigError, match=message):
        load(path, env={})


def test_cli_check_and_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "otel_ml.processor", "--check"], capture_output=True, text=True,
                        env={"OTEL_ML_PROCESSOR_DRIFT_WINDOWS": "1h", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert ok.returncode == 0 and '"drift.windows": [\n    3600.0' in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "otel_ml.processor", "--check"], capture_output=True, text=True,
                         env={"OTEL_ML_PROCESSOR_QUEUE_WAIT": "forever", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert bad.returncode == 2 and "OTEL_ML_PROCESSOR_QUEUE_WAIT" in bad.stderr


def test_every_setting_and_name_is_documented():
    text = DOC.read_text()
    for f in FIELDS:
        assert f"`{f.key}`" in text and f"`{f.env}`" in text, f.key
    processor_names = [v for k, v in vars(semconv).items()
                       if isinstance(v, str) and (k.startswith(("FLEET_", "PROCESSOR_")) or k == "WINDOW")]
    for name in processor_names:
        assert f"`{name}`" in text, name
