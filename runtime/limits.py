"""Input limits: one set, applied identically to the SDK, the CLI and the HTTP API.

Every submission passes ``check_arguments_shape``, ``check_timeout`` and ``check_tags`` in the
RequestHandler before anything is written, and every result passes ``encode_result`` in the
worker that produced it. What breaks a limit is a typed error (``InvalidTaskInput`` and its
subclasses; HTTP 4xx), never an outage.

The depth limit keeps every record inside what the status store accepts: OpenSearch refuses
arrays nested deeper than 20 in a document, and a task's arguments sit one array down.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

from raylane.errors import ArgumentsTooDeep, InvalidTaskInput, PayloadTooLarge, ResultNotSerializable, ResultTooLarge

MAX_TIMEOUT_S = 7 * 86400.0  # a week: longer work belongs in several tasks
MAX_TAGS = 50
MAX_TAG_CHARS = 100
MAX_DEPTH_CAP = 18  # the store's array limit (20) less the record's own levels
ERROR_TEXT_CHARS = 32 * 1024  # an error message or traceback longer than this is cut (its end is kept)
# The words a search's text must all match become one clause each, and OpenSearch refuses a query
# of more than 1,024 clauses; a word takes at least one character.
MAX_SEARCH_TEXT_CHARS = 500
# OpenSearch reads no number longer than 1,000 characters (Jackson's StreamReadConstraints): a
# record holding a longer integer is refused whole. The sign counts, so 999 digits at most.
MAX_INT_DIGITS = 999
_INT_LIMIT = 10**MAX_INT_DIGITS
_INT_LIMIT_BITS = _INT_LIMIT.bit_length() - 1  # below this many bits, an integer is surely under the limit


def check_text(text: str) -> None:
    """Raise ``ValueError`` if ``text`` is no Unicode text: a lone surrogate (``"\\ud800"``, which
    Python strings may hold) cannot be written as UTF-8, so no record or message can carry it."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as e:
            raise ValueError(
                f"a string holds the lone surrogate {text[e.start]!r} (at {e.start}), which is no Unicode text"
            ) from None


def _check_int(number: int) -> None:
    if number.bit_length() >= _INT_LIMIT_BITS and abs(number) >= _INT_LIMIT:
        raise ValueError(f"an integer has more than {MAX_INT_DIGITS} digits, more than the status store reads")


class Limits(NamedTuple):
    """The limits in force (from settings); a tuple, as it travels to every worker."""

    max_payload_bytes: int = 1 << 20
    max_result_bytes: int = 1 << 20
    max_depth: int = 16


def depth_of(value: Any, stop_after: int) -> int:
    """How deeply lists and dicts nest in ``value`` (a scalar is 0, ``[1]`` is 1), counted
    without recursion; counting stops past ``stop_after``, so a hostile value costs little."""
    return shape_of(value, stop_after, math.inf)[0]


def _json_size(item: Any) -> tuple[int, Any]:
    """A lower bound of ``item``'s own length as compact JSON, and its children (None for a
    scalar); ``ValueError`` for what no record can hold."""
    if isinstance(item, str):
        check_text(item)
        return len(item) + 2, None  # the quotes; escapes only add
    if isinstance(item, (list, tuple)):
        return (len(item) + 1 if item else 2), item  # brackets and commas
    if isinstance(item, dict):
        size = 4 * len(item) + 1 if item else 2  # braces, commas, a key's quotes and colon
        for key in item:
            if isinstance(key, str):
                size += len(key)
                check_text(key)
        return size, item.values()
    if item is None or isinstance(item, bool):
        return 4, None  # null, true (false is 5)
    if isinstance(item, int):
        _check_int(item)
    return 1, None  # a number is at least a digit; anything else json.dumps refuses


def shape_of(value: Any, max_depth: float, max_bytes: float) -> tuple[int, int]:
    """How deeply lists and dicts nest in ``value`` (as ``depth_of``), and a lower bound of its
    length as compact JSON, in one walk without recursion, which stops once either is past its
    limit. A value far over a size limit is thus refused at the cost of reading up to the limit,
    not of encoding it all: ``json.dumps`` is one C call that holds the GIL throughout, and in a
    worker the lease's fence thread needs the GIL (150 MiB of text took seconds to encode on a
    loaded node, and the fence ended the worker). Raises ``ValueError`` for a value no record can
    hold although ``json.dumps`` takes it: a lone surrogate in a string (see ``check_text``), or
    an integer of more than ``MAX_INT_DIGITS`` digits."""
    deepest = size = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        grows, children = _json_size(item)
        size += grows
        if size > max_bytes:
            break
        if children is not None:
            level += 1
            if level > deepest:
                deepest = level
                if deepest > max_depth:
                    break
            stack.extend((child, level) for child in children)
    return deepest, size


def check_arguments_shape(args: list, kwargs: dict, limits: Limits) -> int:
    """Check that arguments are JSON, nest at most ``max_depth`` deep and fit ``max_payload_bytes``;
    returns their size in bytes. Raises ``ArgumentsTooDeep``, ``InvalidTaskInput`` or ``PayloadTooLarge``."""
    # [[...],{...}]: brackets, braces, commas, and each name with its quotes and colon.
    floor = 7 + max(len(args) - 1, 0) + max(len(kwargs) - 1, 0)
    floor += sum(len(k) + 3 if isinstance(k, str) else 3 for k in kwargs)
    for where, value in [
        *((f"argument {i}", a) for i, a in enumerate(args)),
        *((f"argument {k!r}", v) for k, v in kwargs.items()),
    ]:
        try:
            depth, size = shape_of(value, limits.max_depth, limits.max_payload_bytes - floor)
        except ValueError as e:
            raise InvalidTaskInput(f"task arguments must be JSON a record can hold: {where}: {e}") from None
        if depth > limits.max_depth:
            raise ArgumentsTooDeep(where, limits.max_depth)
        floor += size
        if floor > limits.max_payload_bytes:
            raise PayloadTooLarge(floor, limits.max_payload_bytes, at_least=True)
    try:
        size = len(json.dumps([args, kwargs], allow_nan=False, separators=(",", ":")).encode())
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidTaskInput(f"task arguments must be JSON (str, int, float, bool, None, list, dict): {e}") from e
    if size > limits.max_payload_bytes:
        raise PayloadTooLarge(size, limits.max_payload_bytes)
    return size


def check_timeout(timeout_s: float | None) -> None:
    """A timeout is finite, positive and at most ``MAX_TIMEOUT_S``; raises ``InvalidTaskInput``."""
    if timeout_s is None:
        return
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, (int, float))
        or not math.isfinite(timeout_s)
        or not 0 < timeout_s <= MAX_TIMEOUT_S
    ):
        raise InvalidTaskInput(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], got {timeout_s!r}")


def check_tags(tags: list[str]) -> None:
    """At most ``MAX_TAGS`` tags of at most ``MAX_TAG_CHARS`` characters each; raises ``InvalidTaskInput``."""
    if len(tags) > MAX_TAGS:
        raise InvalidTaskInput(f"a task may carry at most {MAX_TAGS} tags, got {len(tags)}")
    for tag in tags:
        if not isinstance(tag, str) or not 0 < len(tag) <= MAX_TAG_CHARS:
            raise InvalidTaskInput(f"a tag is a string of 1 to {MAX_TAG_CHARS} characters, got {tag!r:.120}")
        try:
            check_text(tag)
        except ValueError as e:
            raise InvalidTaskInput(f"a tag must be text: {e}") from None


def encode_result(result: Any, limits: Limits) -> None:
    """Check that a task's result can be stored: JSON, at most ``max_depth`` deep and at most
    ``max_result_bytes`` long. Raises ``ResultNotSerializable`` or ``ResultTooLarge``."""
    try:
        depth, floor = shape_of(result, limits.max_depth, limits.max_result_bytes)
    except ValueError as e:
        raise ResultNotSerializable(f"the result is not JSON a record can hold: {e}") from None
    if depth > limits.max_depth:
        raise ResultNotSerializable(
            f"the result nests {depth} or more levels deep, over the limit of {limits.max_depth} (RAYLANE_MAX_DEPTH)"
        )
    if floor > limits.max_result_bytes:
        raise ResultTooLarge(floor, limits.max_result_bytes, at_least=True)
    try:
        size = len(json.dumps(result, allow_nan=False, separators=(",", ":")).encode())
    except (TypeError, ValueError, RecursionError) as e:
        raise ResultNotSerializable(f"the result is not JSON: {e}") from e
    if size > limits.max_result_bytes:
        raise ResultTooLarge(size, limits.max_result_bytes)


def writable(text: str) -> str:
    """``text`` as a record can hold it: each lone surrogate (see ``check_text``) written as its
    escape, ``\\ud800``. For text a task made (its exception's name and message), which is its
    record's data, not input to refuse."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode()


def clip_text(text: str | None, limit: int = ERROR_TEXT_CHARS) -> str | None:
    """``text`` cut to ``limit`` characters, keeping its end (where a traceback says the most),
    and made ``writable``."""
    if text is None:
        return None
    if len(text) > limit:
        text = f"[{len(text) - limit} characters cut] " + text[-limit:]
    return writable(text)


def check_placeable(num_cpus: float, num_gpus: float, memory_mb: int | None, nodes: list[dict[str, float]]) -> None:
    """Raise ``InvalidTaskInput`` unless one of ``nodes`` (each node's total Ray resources:
    ``CPU``, ``GPU``, ``memory`` in bytes) could run a task that asks for these. Ray would keep
    such a task waiting for a node that never comes, and its run slot with it."""
    need = {"CPU": num_cpus, "GPU": num_gpus, "memory": (memory_mb or 0) * 1024 * 1024}
    if any(all(node.get(k, 0.0) >= v for k, v in need.items() if v) for node in nodes):
        return
    asked = f"{num_cpus:g} CPU, {num_gpus:g} GPU" + (f", {memory_mb} MiB memory" if memory_mb else "")
    largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
    offers = (
        f"{largest.get('CPU', 0.0):g} CPU, {largest.get('GPU', 0.0):g} GPU, "
        f"{int(largest.get('memory', 0.0)) // (1024 * 1024)} MiB memory"
    )
    raise InvalidTaskInput(
        f"no node of the cluster can run this task: it asks for {asked}, and the largest node offers {offers} "
        "(on a cluster that adds nodes on demand, set RAYLANE_AUTOSCALING=1 to let such tasks wait for one)"
    )
