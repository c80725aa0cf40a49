"""What otel-ml knows about one model object, computed once and reused on every call.

A :class:`ModelState` holds the model's identity, its kind (classifier, regressor, ...), the span names
and attribute sets of each operation, and its baseline with the validator and drift monitor built on
it. States live in a weak map keyed by the model object, so a discarded model leaves nothing behind;
``forget`` drops a state when the model is refitted or renamed.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from typing import Any

from otel_ml import identity, semconv
from otel_ml.config import Config

_log = logging.getLogger("otel_ml")

BASELINE_ATTRIBUTE = "_otel_ml_baseline"  # where a baseline captured at fit time travels in the model


@functools.lru_cache(maxsize=1024)
def is_composite_class(cls: type) -> bool:
    """Whether a model class's steps deserve child spans: pipelines, column transformers, feature unions and
    meta-estimators (searches, calibration, voting, stacking, one-vs-rest), but not homogeneous ensembles,
    whose hundred trees would bury the trace."""
    mro = cls.__mro__
    if any(c.__name__ == "BaseEnsemble" and c.__module__.startswith("sklearn.ensemble") for c in mro):
        return False
    return any(c.__name__ in ("MetaEstimatorMixin", "_BaseComposition") and c.__module__.startswith("sklearn.")
               for c in mro)


def _sklearn_kind(model: Any) -> str | None:
    try:
        from sklearn import base
    except ImportError:  # pragma: no cover - the instrumentor only runs with scikit-learn
        return None
    for kind, test in (("classifier", base.is_classifier), ("regressor", base.is_regressor),
                       ("clusterer", getattr(base, "is_clusterer", None))):
        try:
            if test is not None and test(model):
                return kind
        except Exception:  # a third-party estimator with broken tags
            continue
    return None


class ModelState:
    """Identity, attributes and data-health helpers of one model object."""

    def __init__(self, model: Any, config: Config) -> None:
        self.identity = identity.resolve(model, config.model_name, config.model_version)
        kind = _sklearn_kind(model)
        self.is_classifier = kind == "classifier"
        classes = getattr(model, "classes_", None) if self.is_classifier else None
        try:
            self.class_labels: list[str] | None = [str(c) for c in classes] if classes is not None else None
        except TypeError:
            self.class_labels = None
        self.model_type = self._model_type(model, kind)
        self.composite = is_composite_class(type(model))
        names = getattr(model, "feature_names_in_", None)
        self.feature_names: list[str] | None = [str(n) for n in names] if names is not None else None
        self.metric_key: tuple = ((semconv.MODEL_NAME, self.identity.name),
                                  (semconv.MODEL_VERSION, self.identity.version))
        # name, version and id: what records and a web request's span say of the model (readers copy it)
        self.identity_attributes: dict[str, str] = dict(self.metric_key)
        if self.identity.id:
            self.identity_attributes[semconv.MODEL_ID] = self.identity.id
        self._base_attributes = {
            semconv.MODEL_NAME: self.identity.name,
            semconv.MODEL_VERSION: self.identity.version,
            semconv.MODEL_CLASS: self.identity.class_name,
            semconv.MODEL_TYPE: self.model_type,
        }
        if self.identity.id:
            self._base_attributes[semconv.MODEL_ID] = self.identity.id
        self._operations: dict[str, tuple[str, dict, tuple]] = {}
        self.baseline: Any = None
        self.validator: Any = None
        self.drift: Any = None
        self.drift_detected = False  # the latest closed drift window's verdict
        self.pending_drift_event: dict | None = None  # put on the next span of this model, then cleared
        self.bin_keys: list[tuple] = []  # metric keys of (feature, bin), in bin_mask order
        self.bin_mask: Any = None
        self.lock = threading.Lock()  # guards the drift monitor (updated by the aggregator)

    def _model_type(self, model: Any, kind: str | None) -> str:
        if kind == "classifier":
            if self.class_labels is None:
                return semconv.MODEL_TYPE_UNKNOWN
            return semconv.MODEL_TYPE_BINARY if len(self.class_labels) == 2 else semconv.MODEL_TYPE_MULTICLASS
        if kind == "regressor":
            return semconv.MODEL_TYPE_REGRESSION
        if kind == "clusterer":
            return semconv.MODEL_TYPE_CLUSTERING
        if hasattr(model, "transform") and not hasattr(model, "predict"):
            return semconv.MODEL_TYPE_TRANSFORMER
        return semconv.MODEL_TYPE_UNKNOWN

    def operation(self, name: str) -> tuple[str, dict, tuple]:
        """(span name, span start attributes, metric attribute key) of an operation, cached."""
        cached = self._operations.get(name)
        if cached is None:
            attributes = {semconv.OPERATION_NAME: name, **self._base_attributes}
            key = self.metric_key + ((semconv.OPERATION_NAME, name),)
            cached = self._operations[name] = (f"{name} {self.identity.name}", attributes, key)
        return cached

    @property
    def name(self) -> str:
        return self.identity.name


class ModelStates:
    """The weak map from model objects to their :class:`ModelState`."""

    def __init__(self, config: Config, on_new_state: Any = None) -> None:
        self.config = config
        self._states: weakref.WeakKeyDictionary[Any, ModelState] = weakref.WeakKeyDictionary()
        self._unhashable: dict[int, ModelState] = {}  # objects that refuse weak references, by id
        self._on_new_state = on_new_state
        self._lock = threading.Lock()
        self._last: tuple[weakref.ref, ModelState] | None = None  # the model asked for last: the usual next one

    def get(self, model: Any) -> ModelState:
        last = self._last
        if last is not None and last[0]() is model:
            return last[1]
        try:
            state = self._states.get(model)
        except TypeError:
            state = self._unhashable.get(id(model))
        if state is None:
            state = ModelState(model, self.config)
            if self._on_new_state is not None:
                self._on_new_state(model, state)
            with self._lock:
                try:
                    self._states[model] = state
                except TypeError:
                    if len(self._unhashable) > 1000:
                        self._unhashable.clear()
                    self._unhashable[id(model)] = state
        try:
            self._last = (weakref.ref(model), state)
        except TypeError:
            pass
        return state

    def forget(self, model: Any) -> None:
        with self._lock:
            self._last = None
            try:
                self._states.pop(model, None)
            except TypeError:
                self._unhashable.pop(id(model), None)

    def clear(self) -> None:
        with self._lock:
            self._last = None
            self._states = weakref.WeakKeyDictionary()
            self._unhashable.clear()
