"""The task registry: task functions by name, shared through the Ray cluster's own KV store.

A driver that defines a task (``__main__`` included) publishes the pickled function to
Ray's GCS, Ray's trusted channel; Kafka and HTTP only ever carry the name and JSON
arguments. Any process in the cluster can then load the function by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import sys
import sysconfig
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

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

    def validate_call(self, args: list, kwargs: dict, leading: int = 0) -> None:
        """Check arguments against the function's signature and type hints; raises ``InvalidTaskInput``.
        ``leading`` positional arguments, not known yet, come before ``args`` (a workflow's task
        takes its parents' results there): they must fit the signature, and no type is checked."""
        check_arguments(self.name, self.fn, [_NOT_YET] * leading + list(args), kwargs)

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
        except Exception:
            hints = _each_hint(fn)
        found = _signatures[fn] = (inspect.signature(fn), hints)
    return found


def _each_hint(fn: Callable) -> dict[str, Any]:
    """``fn``'s type hints one by one, leaving out those that cannot be resolved: a function
    pickled by value keeps only the globals its code uses, so a name used only in an
    annotation (say, the result's) is missing where it runs, and the rest still count."""
    out: dict[str, Any] = {}
    namespace = getattr(fn, "__globals__", {})
    for pname, annotation in getattr(fn, "__annotations__", {}).items():
        try:
            # As typing.get_type_hints does: the text is the function's own annotation.
            out[pname] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
        except Exception:
            continue
    return out


_NOT_YET = object()  # an argument that is not known before the task starts


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
            if v is _NOT_YET:
                continue
            try:
                _check_value(tp, v)
            except ValidationError as e:
                first = e.errors()[0]
                raise InvalidTaskInput(
                    f"argument {pname!r} of {name}{sig}: {first['msg']} (got {type(v).__name__} {v!r:.80})"
                ) from e
            except Exception:  # a hint pydantic cannot check (e.g. a plain class): skip it
                continue


def _check_value(tp: Any, value: Any) -> None:
    """Whether ``value``, as JSON carries it, is a ``tp``: strictly, as Python data first (the
    cheap check every plain argument passes), then as JSON data, where a ``datetime`` is an ISO
    string, a ``UUID`` a string, an ``Enum`` its value and a model a dict. Raises
    ``ValidationError`` (of the Python check) if neither takes it."""
    adapter = _adapter(tp)
    try:
        adapter.validate_python(value, strict=True)
    except ValidationError:
        if not _is_rich(tp):
            raise
        try:
            adapter.validate_json(json.dumps(value), strict=True)
        except (ValidationError, TypeError, ValueError):
            adapter.validate_python(value, strict=True)  # raises the first error again


# ---------------------------------------------------------------- typed arguments and results

_PLAIN = (int, float, str, bool, type(None))
_PLAIN_HINTS = {int, float, str, bool, type(None), Any, object, list, dict, tuple}


def jsonable(value: Any) -> Any:
    """``value`` as the JSON data raylane carries: plain values as they are; datetimes, dates,
    UUIDs, enums, pydantic models, dataclasses, sets and the like in pydantic's JSON form. A
    value pydantic cannot convert is returned as it is, for the checks that follow to refuse."""
    if type(value) in _PLAIN:
        return value
    try:
        return to_jsonable_python(value)
    except Exception:
        return value


def _is_rich(tp: Any) -> bool:
    """Whether values of hint ``tp`` differ from their JSON form (a datetime, a model, a list of
    UUIDs...), so that they are converted on the way in and out."""
    if tp in _PLAIN_HINTS or isinstance(tp, typing.TypeVar):
        return False
    origin = typing.get_origin(tp)
    if origin is None:
        return True
    if origin is typing.Literal:
        return False
    if origin is typing.Annotated:
        return _is_rich(typing.get_args(tp)[0])
    return origin not in (list, dict, tuple, set, frozenset, typing.Union, types.UnionType) or any(
        _is_rich(a) for a in typing.get_args(tp) if a is not Ellipsis
    )


_rich_parameters: dict[Callable, dict[str, Any]] = {}


def _rich(fn: Callable) -> dict[str, Any]:
    """``fn``'s parameters whose hints are rich (see ``_is_rich``), with the hint; worked out once."""
    found = _rich_parameters.get(fn)
    if found is None:
        _, hints = _signature(fn)
        found = _rich_parameters[fn] = {p: tp for p, tp in hints.items() if p != "return" and _is_rich(tp)}
    return found


def typed_arguments(fn: Callable, args: list, kwargs: dict) -> tuple[list, dict]:
    """The arguments as ``fn`` takes them: each JSON value of a parameter with a rich hint
    converted by pydantic (an ISO string to a ``datetime``, a dict to a model...). The values
    were checked against the hints before they were accepted, so this conversion succeeds."""
    rich = _rich(fn)
    if not rich:
        return args, kwargs
    sig, _ = _signature(fn)
    bound = sig.bind(*args, **kwargs)
    for pname, tp in rich.items():
        if pname not in bound.arguments:
            continue
        kind = sig.parameters[pname].kind
        adapter = _adapter(tp)
        value = bound.arguments[pname]
        if kind is inspect.Parameter.VAR_POSITIONAL:
            bound.arguments[pname] = tuple(adapter.validate_python(v) for v in value)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            bound.arguments[pname] = {k: adapter.validate_python(v) for k, v in value.items()}
        else:
            bound.arguments[pname] = adapter.validate_python(value)
    return list(bound.args), dict(bound.kwargs)


def result_hint(fn: Callable) -> Any | None:
    """The hint of ``fn``'s result (of an ``async def`` function, what it returns once awaited)
    if it is rich (see ``_is_rich``), else None."""
    _, hints = _signature(fn)
    tp = hints.get("return")
    return tp if tp is not None and _is_rich(tp) else None


def typed_result(hint: Any | None, value: Any) -> Any:
    """A result as JSON carried it, converted to ``hint`` (see ``result_hint``) if there is one."""
    return value if hint is None else _adapter(hint).validate_python(value)
