"""Automatic instrumentation of scikit-learn inference and training.

Usage, with no code change::

    pip install otel-ml
    opentelemetry-instrument python app.py

or in code::

    from otel_ml.instrumentation.sklearn import SklearnInstrumentor
    SklearnInstrumentor().instrument()

What gets patched: the inference methods (``predict``, ``predict_proba``, ``predict_log_proba``,
``decision_function``, ``transform``, ``score``) and training methods (``fit``, ``fit_transform``,
``fit_predict``, ``partial_fit``) of every class derived from ``sklearn.base.BaseEstimator`` and of the
mixins they inherit from: scikit-learn's own classes, classes imported or defined later (user
subclasses, scikit-learn-API wrappers of other libraries), and models loaded with pickle or joblib
(they are instances of those classes). Patching happens once per class, when ``sklearn.base`` is first
imported: instrumenting imports nothing of scikit-learn by itself. A method defined with ``def`` (884 of
957 in scikit-learn 1.9) is replaced by a plain function that calls it (:func:`_patched_function`);
any other descriptor (``available_if``, which makes ``hasattr(pipeline, "predict_proba")`` follow the
final step) by a ``wrapt.FunctionWrapper``, which keeps its ``__get__``. The plain function is bound
by Python itself at 50 ns per ``model.predict`` where wrapt's bound proxy costs 400 ns, and a model call
reads its method twice (``predict_proba`` calls ``decision_function`` inside).

A call inside another model call on the same object (``predict`` calling ``predict_proba``) is part
of the outer span; a call on another object (a pipeline's steps, a search's candidates) is a child
span of it, up to ``OTEL_ML_MAX_CHILD_SPANS``. Inside a model without steps (any other estimator,
forests included), inner model calls are part of the call and skip otel-ml's wrapper;
work a call hands to joblib's worker threads stays part of it. Every setting is an
``OTEL_ML_*`` variable, see :mod:`otel_ml.config` and ``docs/configuration.md``.

Spans are written on otel-ml's aggregator thread (see :mod:`otel_ml.telemetry`); the SDK's
``TracerProvider.force_flush`` and ``shutdown`` are patched to write the spans otel-ml still holds first.

``instrument()`` accepts ``tracer_provider``, ``metric_exporter`` (tests) and ``config`` (a
:class:`otel_ml.config.Config`); ``uninstrument()`` restores every patched method and loader.
"""

from __future__ import annotations

import functools
import logging
import threading
import types
from collections.abc import Collection
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from otel_ml import config as config_module
from otel_ml import identity
from otel_ml.model_state import is_composite_class
from otel_ml.observation import TRAINING_OPERATIONS
from otel_ml.package import _instruments_sklearn
from otel_ml.telemetry import ACTIVE, WRAPPING, Call, Step, Telemetry, wrapping_on

_log = logging.getLogger("otel_ml")

_INPUT_KEYWORDS = ("X", "raw_documents")


def _inputs(args: tuple, kwargs: dict) -> Any:
    if args:
        return args[0]
    for key in _INPUT_KEYWORDS:
        if key in kwargs:
            return kwargs[key]
    return None


class _PartOfCall:
    """A joblib task of a model call, run in a worker thread as part of that call: under the call's span
    when the call has one (a search's candidates become its child spans), with otel-ml's wrappers off
    otherwise."""

    __slots__ = ("function", "parent")

    def __init__(self, function: Any, parent: Call | Step | None) -> None:
        self.function, self.parent = function, parent

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.parent is not None:
            token = ACTIVE.set(self.parent)
            try:
                return self.function(*args, **kwargs)
            finally:
                ACTIVE.reset(token)
        previous, WRAPPING.on = WRAPPING.on, False
        try:
            return self.function(*args, **kwargs)
        finally:
            WRAPPING.on = previous

    def __getattr__(self, name: str) -> Any:  # joblib reads a task's name for its logs
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.function, name)


class _BoundMethod(wrapt.BoundFunctionWrapper):
    """A patched method bound to its model. It pickles as the plain bound method does (by name, from the
    model), so that ``multiprocessing`` and joblib's worker processes take ``model.predict`` as they would
    without otel-ml (wrapt's proxies refuse to be pickled)."""

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return getattr, (self.__self__, self.__name__)

    def __reduce__(self) -> tuple:
        return self.__reduce_ex__(2)


class _MethodWrapper(wrapt.FunctionWrapper):
    """wrapt's wrapper of a patched descriptor (skipped in wrapt's C code while ``WRAPPING.on`` is False)."""

    __bound_function_wrapper__ = _BoundMethod


_NO_X = object()  # X not passed: the original is called as it was, and uses its own default or raises


def _patched_function(original: types.FunctionType, wrapper: Any) -> types.FunctionType:
    """``original`` (a method defined with ``def``) calling ``wrapper(bound method, model, args, kwargs)``,
    as a ``wrapt.FunctionWrapper`` would, while ``WRAPPING.on`` is True, and itself plainly otherwise. It
    keeps the original's name (in error messages too), docstring and signature (``__wrapped__``), and
    binds and pickles as the original does.

    Inside a model call the plain path is what runs, once per inner model call (a forest's hundred
    trees): for a method whose first parameter is ``X`` (nearly all), ``model.method(X)`` reaches the
    original without packing ``*args, **kwargs`` (100 ns instead of 250).

    >>> class Model:
    ...     def predict(self, X):
    ...         return X
    >>> def wrapper(wrapped, instance, args, kwargs):
    ...     return ("wrapped", wrapped(*args, **kwargs))
    >>> Model.predict = _patched_function(Model.predict, wrapper)
    >>> Model().predict(1), Model().predict(X=2), Model.predict.__name__, _is_patched(Model.predict)
    (('wrapped', 1), ('wrapped', 2), 'predict', True)
    """
    thread, bind = WRAPPING, types.MethodType
    code = original.__code__
    if code.co_argcount >= 2 and code.co_varnames[1] == "X" and not code.co_posonlyargcount:
        def method(self: Any, X: Any = _NO_X, *args: Any, **kwargs: Any) -> Any:  # noqa: N803
            if thread.on:
                return wrapper(bind(original, self), self, args if X is _NO_X else (X, *args), kwargs)
            if args or kwargs or X is _NO_X:
                return original(self, *args, **kwargs) if X is _NO_X else original(self, X, *args, **kwargs)
            return original(self, X)
    else:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            if thread.on:
                return wrapper(bind(original, self), self, args, kwargs)
            return original(self, *args, **kwargs)

    method = functools.wraps(original)(method)
    try:  # "predict() missing 1 required positional argument", as the original says it
        method.__code__ = method.__code__.replace(co_name=code.co_name, co_qualname=code.co_qualname)
    except (AttributeError, TypeError):  # Python 3.10: no qualified name in code objects
        method.__code__ = method.__code__.replace(co_name=code.co_name)
    method._otel_ml_patch = method  # type: ignore[attr-defined]  # see _is_patched
    return method


def _is_patched(method: Any) -> bool:
    """Whether ``method`` is otel-ml's already (a copy of the marker, by ``functools.wraps``, is not)."""
    return isinstance(method, wrapt.FunctionWrapper) or getattr(method, "_otel_ml_patch", None) is method


def _runs_in_worker_threads(parallel: Any) -> bool:
    """Whether a ``joblib.Parallel`` hands its tasks to other threads of this process. One job (scikit-
    learn's default) runs them in the calling thread, which keeps the call's context; worker processes
    (loky) are not instrumented and are left alone, so no task gains a need to be picklable."""
    try:
        return bool(getattr(parallel._backend, "uses_threads", False)) and parallel._effective_n_jobs() != 1
    except Exception:  # another joblib: leave its tasks as they are
        return False


def _part_of_call(tasks: Any, parent: Call | Step | None) -> Any:
    return ((_PartOfCall(function, parent), args, kwargs) for function, args, kwargs in tasks)


class _Patcher:
    """Wraps estimator methods class by class and undoes it."""

    def __init__(self, telemetry: Telemetry, methods: tuple[str, ...]) -> None:
        self.telemetry = telemetry
        self.methods = methods
        self.enabled = True
        self._patched: list[tuple[type, str, Any]] = []
        self._seen: set[type] = set()
        self._lock = threading.RLock()
        self._wrappers = {name: self._make_wrapper(name) for name in methods}
        self._base: type | None = None
        self._had_init_subclass = False
        self._loaders: list[tuple[Any, str, Any]] = []

    # -- the wrapper around every patched method ---------------------------------------------------------
    def _make_wrapper(self, method: str) -> Any:
        """The wrapper of ``method`` in every class: an outermost call (the request path, in one frame), a
        step of a model with steps, or a model's call of its own methods (part of its call)."""
        telemetry, training = self.telemetry, method in TRAINING_OPERATIONS

        def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            if instance is None or not self.enabled:
                return wrapped(*args, **kwargs)
            active = ACTIVE.get()
            if active is not None:
                if active.estimator is instance:  # a model with steps calling its own methods: part of its span
                    return wrapped(*args, **kwargs)
                return self._step(active, wrapped, instance, method, args, kwargs)
            try:
                call: Call = telemetry.begin(instance, method, args[0] if args else _inputs(args, kwargs))
                if training:
                    call.targets = args[1] if len(args) > 1 else kwargs.get("y")
            except telemetry.passthrough_errors:
                raise  # strict input validation: the caller asked for this error
            except Exception as exc:
                telemetry.internal_error("begin", exc)
                return wrapped(*args, **kwargs)
            # a call whose steps get spans (a composite) is their parent; in any other call, inner model
            # calls are part of it and skip the wrapper altogether (we are here because WRAPPING.on is True)
            leaf = call.steps is None
            if leaf:
                WRAPPING.on = False
            else:
                token = ACTIVE.set(call)
            try:
                result = wrapped(*args, **kwargs) if kwargs else wrapped(*args)
            except BaseException as exc:
                if leaf:
                    WRAPPING.on = True
                else:
                    ACTIVE.reset(token)
                telemetry.finish(call, exc=exc)
                raise
            if leaf:
                WRAPPING.on = True
            else:
                ACTIVE.reset(token)
            telemetry.finish(call, result)
            return result

        return wrapper

    def _step(self, parent: Call | Step, wrapped: Any, instance: Any, method: str, args: tuple,
              kwargs: dict) -> Any:
        telemetry = self.telemetry
        try:
            step = telemetry.begin_step(parent, instance, method)
        except Exception as exc:
            telemetry.internal_error("begin_step", exc)
            step = None
        if step is None:
            return wrapped(*args, **kwargs)
        # a composite step's own steps get child spans; a leaf step's inner calls (a forest's trees) skip
        leaf = not is_composite_class(type(instance))
        if leaf:
            WRAPPING.on = False
        else:
            token = ACTIVE.set(step)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            step.finish(exc)
            raise
        finally:
            if leaf:
                WRAPPING.on = True
            else:
                ACTIVE.reset(token)
        step.finish()
        return result

    # -- classes ----------------------------------------------------------------------------------------
    def patch_class(self, cls: type) -> None:
        """Wrap the methods ``cls`` and its bases define themselves (each class once)."""
        with self._lock:
            for klass in cls.__mro__:
                if klass is object or klass in self._seen:
                    continue
                self._seen.add(klass)
                for name in self.methods:
                    original = klass.__dict__.get(name)
                    if original is None or _is_patched(original) or isinstance(original, (staticmethod, classmethod)):
                        continue
                    if type(original) is types.FunctionType:
                        patched = _patched_function(original, self._wrappers[name])
                    elif callable(original) or hasattr(original, "__get__"):
                        patched = _MethodWrapper(original, self._wrappers[name], enabled=wrapping_on)
                    else:
                        continue
                    try:
                        setattr(klass, name, patched)
                    except (TypeError, AttributeError):  # a class that refuses new attributes
                        continue
                    self._patched.append((klass, name, original))

    def on_sklearn_base(self, module: Any) -> None:
        """Post-import hook of ``sklearn.base``: patch what exists and hook every future subclass."""
        if not self.enabled or self._base is not None:
            return
        base = module.BaseEstimator
        self._base = base
        pending = [base]
        while pending:
            cls = pending.pop()
            self.patch_class(cls)
            pending.extend(cls.__subclasses__())
        patcher = self
        self._had_init_subclass = "__init_subclass__" in base.__dict__

        def __init_subclass__(cls: type, **kwargs: Any) -> None:  # noqa: N807
            super(base, cls).__init_subclass__(**kwargs)
            if patcher.enabled:
                try:
                    patcher.patch_class(cls)
                except Exception as exc:
                    patcher.telemetry.internal_error("patch_class", exc)

        base.__init_subclass__ = classmethod(__init_subclass__)

    # -- loaders ---------------------------------------------------------------------------------------
    def patch_loader(self, module: Any, name: str) -> None:
        original = getattr(module, name, None)
        if original is None or isinstance(original, wrapt.FunctionWrapper):
            return
        telemetry = self.telemetry

        def loader(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            loaded = wrapped(*args, **kwargs)
            if self.enabled:
                try:
                    source = args[0] if args else kwargs.get("filename", kwargs.get("file"))
                    path = identity.path_of(source)
                    if path is not None:
                        identity.remember_origin(loaded, path)
                except Exception as exc:
                    telemetry.internal_error("model_origin", exc)
            return loaded

        setattr(module, name, wrapt.FunctionWrapper(original, loader))
        self._loaders.append((module, name, original))

    # -- joblib tasks of a model call -----------------------------------------------------------------
    def patch_parallel(self, module: Any) -> None:
        """Carry "inside a model call" into the tasks a call hands to joblib's worker threads (a forest's
        trees with ``n_jobs``, a search's candidates): context variables do not follow work there, where
        every tree would otherwise look like a model call of its own."""
        parallel = getattr(module, "Parallel", None)
        original = getattr(parallel, "__dict__", {}).get("__call__")
        if original is None or isinstance(original, wrapt.FunctionWrapper):
            return

        def dispatch(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            wrapping, active = WRAPPING.on, ACTIVE.get()
            if not self.enabled or (wrapping and active is None) or not _runs_in_worker_threads(instance):
                return wrapped(*args, **kwargs)  # the user's own joblib work, or tasks that need no help
            parent = active if wrapping else None
            if args:
                args = (_part_of_call(args[0], parent), *args[1:])
            elif "iterable" in kwargs:
                kwargs = {**kwargs, "iterable": _part_of_call(kwargs["iterable"], parent)}
            return wrapped(*args, **kwargs)

        parallel.__call__ = wrapt.FunctionWrapper(original, dispatch)
        self._patched.append((parallel, "__call__", original))

    # -- the SDK's flush and shutdown --------------------------------------------------------------------
    def patch_provider(self, provider_class: type) -> None:
        """Before the SDK's ``TracerProvider.force_flush`` and ``shutdown``, write the spans otel-ml still
        holds (they are written on its aggregator thread): a job that flushes its provider before it
        exits gets every model span, as it would with spans made during the calls."""
        telemetry = self.telemetry

        def write_held_spans_first(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            if self.enabled:
                try:
                    telemetry.aggregator.drain()
                except Exception as exc:
                    telemetry.internal_error("flush", exc)
            return wrapped(*args, **kwargs)

        for name in ("force_flush", "shutdown"):
            original = provider_class.__dict__.get(name)
            if original is None or isinstance(original, wrapt.FunctionWrapper):
                continue
            setattr(provider_class, name, wrapt.FunctionWrapper(original, write_held_spans_first))
            self._patched.append((provider_class, name, original))

    # -- undo -----------------------------------------------------------------------------------------
    def unpatch(self) -> None:
        with self._lock:
            self.enabled = False
            for klass, name, original in reversed(self._patched):
                setattr(klass, name, original)
            self._patched.clear()
            self._seen.clear()
            for module, name, original in reversed(self._loaders):
                setattr(module, name, original)
            self._loaders.clear()
            if self._base is not None:
                if not self._had_init_subclass:
                    del self._base.__init_subclass__
                self._base = None


class SklearnInstrumentor(BaseInstrumentor):
    """OpenTelemetry instrumentor for scikit-learn models (see the module docstring)."""

    _patcher: _Patcher | None = None
    telemetry: Telemetry | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments_sklearn

    def _instrument(self, **kwargs: Any) -> None:
        config = kwargs.get("config") or config_module.load()
        telemetry = Telemetry(config, tracer_provider=kwargs.get("tracer_provider"),
                              metric_exporter=kwargs.get("metric_exporter"),
                              resource=kwargs.get("resource"),
                              export_interval=kwargs.get("export_interval"))
        patcher = _Patcher(telemetry, config.methods)
        self.telemetry, self._patcher = telemetry, patcher
        global _active
        _active = telemetry
        wrapt.register_post_import_hook(lambda module: patcher.on_sklearn_base(module)
                                        if self._patcher is patcher else None, "sklearn.base")
        wrapt.register_post_import_hook(lambda module: patcher.patch_loader(module, "load")
                                        if self._patcher is patcher else None, "pickle")
        wrapt.register_post_import_hook(lambda module: patcher.patch_loader(module, "load")
                                        if self._patcher is patcher else None, "joblib")
        wrapt.register_post_import_hook(lambda module: patcher.patch_parallel(module)
                                        if self._patcher is patcher else None, "joblib.parallel")
        wrapt.register_post_import_hook(lambda module: patcher.patch_provider(module.TracerProvider)
                                        if self._patcher is patcher else None, "opentelemetry.sdk.trace")
        if config.prediction_records_rate > 0:  # records are emitted by the outcome tracker's listener
            from otel_ml.outcomes import tracker

            tracker(telemetry)
        _register_shutdown(telemetry)

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._patcher is not None:
            self._patcher.unpatch()
        if self.telemetry is not None:
            from otel_ml.outcomes import detach

            detach(self.telemetry)
            self.telemetry.shutdown()
        self._patcher = None
        self.telemetry = None
        global _active
        _active = None


_active: Telemetry | None = None  # SklearnInstrumentor().telemetry, read on every request by the Flask side


def active_telemetry() -> Telemetry | None:
    """The running :class:`Telemetry` (None until ``SklearnInstrumentor().instrument()``)."""
    return _active


def _register_shutdown(telemetry: Telemetry) -> None:
    import atexit

    atexit.register(telemetry.shutdown)
