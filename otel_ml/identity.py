"""Which model answered: name, version and id, found without code changes.

Precedence, highest first: :func:`set_model_identity` in code (several models in one process),
``OTEL_ML_MODEL_NAME`` / ``OTEL_ML_MODEL_VERSION``, the file the model was loaded from with pickle or
joblib (file stem as name, the first 12 hex digits of the file's SHA-256 as id), the class name.

Loading is observed by wrapping ``pickle.load`` and ``joblib.load``: the result (or the estimators in a
dict/list/tuple it returns) is remembered in a weak map with its file, so nothing is added to the
model object and nothing changes what the loader returns.

>>> from sklearn.linear_model import LogisticRegression
>>> model = LogisticRegression()
>>> set_model_identity(model, name="credit_risk", version="3")
>>> resolve(model, env_name=None, env_version=None).name
'credit_risk'
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any

HASH_PREFIX = 12  # hex digits of the SHA-256 kept as ml.model.id
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileOrigin:
    path: str  # the file's absolute path
    name: str  # the file stem (with the key, when the file held several models)
    sha256_prefix: str


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    id: str | None
    class_name: str
    path: str | None = None  # the file it was loaded from, when known


_lock = threading.Lock()
_explicit: weakref.WeakKeyDictionary[Any, dict[str, str | None]] = weakref.WeakKeyDictionary()
_origins: weakref.WeakKeyDictionary[Any, FileOrigin] = weakref.WeakKeyDictionary()


def set_model_identity(model: Any, name: str | None = None, version: str | None = None,
                       model_id: str | None = None) -> None:
    """Name a model in code; wins over environment variables and file names."""
    with _lock:
        _explicit[model] = {"name": name, "version": version, "id": model_id}


def file_sha256_prefix(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()[:HASH_PREFIX]


def _is_model(obj: Any) -> bool:
    return hasattr(obj, "get_params") and (hasattr(obj, "predict") or hasattr(obj, "transform"))


def remember_origin(loaded: Any, path: str) -> None:
    """Record that ``loaded`` (or the models inside a dict/list/tuple) came from ``path``."""
    candidates: list[tuple[Any, str]] = []
    stem = os.path.splitext(os.path.basename(path))[0]
    if _is_model(loaded):
        candidates.append((loaded, stem))
    elif isinstance(loaded, dict):
        models = [(k, v) for k, v in loaded.items() if _is_model(v)]
        candidates += [(v, stem if len(models) == 1 else f"{stem}.{k}") for k, v in models]
    elif isinstance(loaded, (list, tuple)):
        models = [v for v in loaded if _is_model(v)]
        candidates += [(v, stem if len(models) == 1 else f"{stem}.{i}") for i, v in enumerate(models)]
    if not candidates:
        return
    digest = file_sha256_prefix(path)
    with _lock:
        for model, name in candidates:
            try:
                _origins[model] = FileOrigin(os.path.abspath(path), name, digest)
            except TypeError:  # not weak-referenceable: identity falls back to the class
                pass


def path_of(source: Any) -> str | None:
    """The filesystem path behind a loader's argument (a path or an open file), if any."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) and os.path.isfile(name) else None


def origin_of(model: Any) -> FileOrigin | None:
    with _lock:
        try:
            return _origins.get(model)
        except TypeError:
            return None


def resolve(model: Any, env_name: str | None, env_version: str | None) -> ModelIdentity:
    """The identity of ``model`` by the precedence in this module's docstring."""
    class_name = type(model).__name__
    with _lock:
        try:
            explicit = _explicit.get(model) or {}
            origin = _origins.get(model)
        except TypeError:
            explicit, origin = {}, None
    name = explicit.get("name") or env_name or (origin.name if origin else None) or class_name
    version = explicit.get("version") or env_version or "unknown"
    model_id = explicit.get("id") or (origin.sha256_prefix if origin else None)
    return ModelIdentity(name=name, version=version, id=model_id, class_name=class_name,
                         path=origin.path if origin else None)
