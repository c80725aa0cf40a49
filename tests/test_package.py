"""What the launcher sees: entry points, flags for every variable, the instruments-any extra, config errors."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import distribution, entry_points
from pathlib import Path

import pytest
from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

from otel_ml import config


def test_instrumentors_are_registered_for_the_launcher():
    names = {ep.name: ep.value for ep in entry_points(group="opentelemetry_instrumentor")}
    assert names["sklearn_ml"] == "otel_ml.instrumentation.sklearn:SklearnInstrumentor"
    assert names["flask_ml"] == "otel_ml.instrumentation.flask:FlaskMLInstrumentor"


def test_launcher_offers_every_variable_as_a_flag():
    launcher = Path(sys.executable).with_name("opentelemetry-instrument")
    out = subprocess.run([str(launcher), "--help"], capture_output=True, text=True, check=True).stdout
    for variable in config.VARIABLES:
        flag = "--" + variable.env.removeprefix("OTEL_").lower()
        assert flag in out, flag


def test_a_missing_flask_does_not_disable_the_sklearn_instrumentor():
    extras = [r for r in distribution("otel-ml").requires or [] if 'extra == "instruments-any"' in r]
    assert any(r.startswith("scikit-learn") for r in extras) and any(r.startswith("flask") for r in extras)
    # the launcher's check: any one of the instruments-any packages present is enough
    assert get_dependency_conflicts([], ["scikit-learn >= 1.2", "a-package-that-is-not-installed"]) is None
    assert get_dependency_conflicts([], ["a-package-that-is-not-installed"]) is not None


@pytest.mark.parametrize(("env", "message"), [
    ({"OTEL_ML_SUMMARY_MIN_ROWS": "1"}, "OTEL_ML_SUMMARY_MIN_ROWS='1': expected an integer >= 2"),
    ({"OTEL_ML_CAPTURE_RAW": "maybe"}, "OTEL_ML_CAPTURE_RAW='maybe': expected true or false"),
    ({"OTEL_ML_INFERENCE_METHODS": "predict,guess"}, "unknown method 'guess'"),
    ({"OTEL_ML_PREDICTION_RECORDS_RATE": "2"}, "expected a number from 0 to 1"),
])
def test_invalid_values_name_the_variable_and_the_value(env, message):
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.load(env)


def test_methods_can_be_narrowed_and_training_switched_off():
    cfg = config.load({"OTEL_ML_INFERENCE_METHODS": "predict_proba", "OTEL_ML_TRAINING_ENABLED": "false"})
    assert cfg.methods == ("predict_proba",)


def test_the_launcher_imports_no_scikit_learn_until_the_app_does():
    launcher = Path(sys.executable).with_name("opentelemetry-instrument")
    code = ("import sys; before = 'sklearn' in sys.modules; "
            "from sklearn.linear_model import LogisticRegression as L; "
            "from otel_ml.instrumentation.sklearn import _is_patched; "
            "print(before, _is_patched(L.__dict__['predict_proba']))")
    env = {"PATH": str(Path(sys.executable).parent), "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none"}
    out = subprocess.run([str(launcher), sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert out == ["False", "True"]
