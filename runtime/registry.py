"""The task registry: task functions by name, shared through the Ray cluster's own KV store.

A driver that defines a task (``__main__`` included) publishes the pickled function to
Ray's GCS, Ray's trusted channel; Kafka and HTTP only ever carry the name and JSON
arguments. Any process in the cluster can then load the function by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import sys
import sysconfig
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from raylane.compat import kv_get, kv_list, kv_put
from raylane.errors import InvalidTaskInput, UnknownTaskName
from raylane.limits import check_tags, check_timeout
from raylane.models import NAME_PATTERN, QUEUE_PATTERN, Resources, RetryPolicy

_KV_NAMESPACE = "raylane"
_NAME_KEY = "task:"
_BLOB_KEY = "blob:"


@dataclass
class TaskDefinition:
    """A registered task: its function and the defaults of its submissions."""

    name: str
    fn: Callable
    timeout_s: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    queue: str | None = None
    resources: Resources = field(default_factory=Resources)
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        import re

        if not re.match(NAME_PATTERN, self.name):
            raise InvalidTaskInput(f"task name {self.name!r} must match {NAME_PATTERN}")
        if self.queue is not None and not re.match(QUEUE_PATTERN, self.queue):
            raise InvalidTaskInput(f"queue name {self.queue!r} must match {QUEUE_PATTERN}")
        check_timeout(self.timeout_s)
        check_tags(list(self.tags))

    def validate_call(self, args: list, kwargs: dict) -> None:
        """Check arguments against the function's signature and type hints; raises ``InvalidTaskInput``."""
        check_arguments(self.name, self.fn, args, kwargs)

    def parameter_names(self) -> tuple[set[str], bool]:
        """The names the function takes as keyword arguments, and whether it takes ``**kwargs``."""
        sig, _ = _signature(self.fn)
        kinds = {p.kind for p in sig.parameters.values()}
        named = {
            p.name
            for p in sig.parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        return named, inspect.Parameter.VAR_KEYWORD in kinds


def _importable_elsewhere(module_name: str) -> bool:
    """Whether a Ray worker can import this module by name (an installed package)."""
    if module_name == "__main__":
        return False
    mod = sys.modules.get(module_name)
    path = getattr(mod, "__file__", None) or ""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], sysconfig.get_paths()["stdlib"]}
    return module_name.split(".")[0] == "raylane" or any(path.startswith(r) for r in roots)


def dumps_definition(defn: TaskDefinition) -> bytes:
    """Pickle a definition; functions of modules that workers cannot import are pickled by value."""
    from ray import cloudpickle

    module_name = getattr(defn.fn, "__module__", "__main__")
    by_value = not _importable_elsewhere(module_name) and module_name in sys.modules and module_name != "__main__"
    if by_value:
        cloudpickle.register_pickle_by_value(sys.modules[module_name])
    try:
        return cloudpickle.dumps(defn)
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(sys.modules[module_name])


def publish(defn: TaskDefinition) -> tuple[str, bytes]:
    """Make ``defn`` loadable by name anywhere in the connected Ray cluster; returns its digest and pickle."""
    blob = dumps_definition(defn)
    digest = hashlib.sha256(blob).hexdigest()
    restore(defn.name, digest, blob)
    return digest, blob


def restore(name: str, digest: str, blob: bytes) -> None:
    """Register a pickled definition under ``name`` (as ``publish`` does, or from a kept copy whose
    signature the caller checked). A blob is stored under its own SHA-256 and never replaced, so
    content under a digest is always the content that digest names."""
    if hashlib.sha256(blob).hexdigest() != digest:
        raise InvalidTaskInput(f"the digest of task definition {name!r} does not match its pickle")
    kv_put(_BLOB_KEY + digest, blob, namespace=_KV_NAMESPACE, overwrite=False)
    kv_put(_NAME_KEY + name, digest, namespace=_KV_NAMESPACE)
    _names[name] = (digest, time.monotonic() + NAME_TTL_S)


_loaded: dict[str, TaskDefinition] = {}  # digest -> definition, per process
# name -> (digest, until when it is trusted): saves a GCS round trip per submit and per run.
# A definition published again under the same name takes effect within NAME_TTL_S everywhere.
_names: dict[str, tuple[str, float]] = {}
NAME_TTL_S = 1.0


def _digest_of(name: str) -> str | None:
    hit = _names.get(name)
    now = time.monotonic()
    if hit is not None and hit[1] > now:
        return hit[0]
    raw = kv_get(_NAME_KEY + name, namespace=_KV_NAMESPACE)
    if raw is None:
        _names.pop(name, None)
        return None
    _names[name] = (raw.decode(), now + NAME_TTL_S)
    return raw.decode()


def load(name: str) -> TaskDefinition:
    """The definition registered under ``name``; raises ``UnknownTaskName``."""
    from ray import cloudpickle

    digest = _digest_of(name)
    if digest is None:
        raise UnknownTaskName(name, registered_names())
    defn = _loaded.get(digest)
    if defn is None:
        blob = kv_get(_BLOB_KEY + digest, namespace=_KV_NAMESPACE)
        if blob is None:
            raise UnknownTaskName(name)
        if hashlib.sha256(blob).hexdigest() != digest:
            raise InvalidTaskInput(
                f"the definition of task {name!r} in Ray's KV store does not match its digest; it was not loaded"
            )
        defn = cloudpickle.loads(blob)
        _loaded[digest] = defn
    return defn


def registered_names() -> list[str]:
    """Names of every task registered in the cluster."""
    keys = kv_list(_NAME_KEY, namespace=_KV_NAMESPACE)
    return sorted(k.decode()[len(_NAME_KEY) :] for k in keys)


_adapters: dict[Any, TypeAdapter] = {}


def _adapter(tp: Any) -> TypeAdapter:
    try:
        return _adapters[tp]
    except (KeyError, TypeError):
        adapter = TypeAdapter(tp)
        with contextlib.suppress(TypeError):
            _adapters[tp] = adapter
        return adapter


_signatures: dict[Callable, tuple[inspect.Signature, dict]] = {}


def _signature(fn: Callable) -> tuple[inspect.Signature, dict]:
    """``fn``'s signature and type hints, worked out once per function."""
    found = _signatures.get(fn)
    if found is None:
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolvable annotations: the signature check still applies
            hints = {}
        found = _signatures[fn] = (inspect.signature(fn), hints)
    return found


def check_arguments(name: str, fn: Callable, args: list, kwargs: dict) -> None:
    """Bind ``args``/``kwargs`` to ``fn``'s signature and check each against its type hint (strictly)."""
    sig, hints = _signature(fn)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise InvalidTaskInput(f"arguments do not fit {name}{sig}: {e}") from e
    for pname, value in bound.arguments.items():
        tp = hints.get(pname)
        if tp is None:
            continue
        kind = sig.parameters[pname].kind
        values = (
            value
            if kind is inspect.Parameter.VAR_POSITIONAL
            else (value.values() if kind is inspect.Parameter.VAR_KEYWORD else [value])
        )
        for v in values:
            try:
                _adapter(tp).validate_python(v, strict=True)
            except ValidationError as e:
                first = e.errors()[0]
                raise InvalidTaskInput(
                    f"argument {pname!r} of {name}{sig}: {first['msg']} (got {type(v).__name__} {v!r:.80})"
                ) from e
            except Exception:  # a hint pydantic cannot check (e.g. a plain class): skip it
                continue
