"""Unit tier (no services): signatures, input limits and per-token limits."""

from __future__ import annotations

import hashlib
import json
import math
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylane.errors import (
    ArgumentsTooDeep,
    ConfigError,
    InvalidTaskInput,
    PayloadTooLarge,
    ResultNotSerializable,
    ResultTooLarge,
)
from raylane.limits import (
    Limits,
    check_arguments_shape,
    check_tags,
    check_timeout,
    clip_text,
    depth_of,
    encode_result,
    shape_of,
)
from raylane.models import WriteOutcome
from raylane.ratelimit import ConcurrencyLimiter, OverLimit, RateLimiter
from raylane.signing import Signer, load_or_create_secret

SIGNER = Signer(b"k" * 32)


def nested(levels: int, inner=1):
    for _ in range(levels):
        inner = [inner]
    return inner


# ---------------------------------------------------------------- signatures


def test_message_signature_holds_only_for_the_same_bytes_and_secret():
    value = b'{"id": "x"}'
    sig = SIGNER.sign_message(value)
    assert SIGNER.message_ok(value, sig) and SIGNER.message_ok(value, sig.encode())
    assert not SIGNER.message_ok(value + b" ", sig)
    assert not Signer(b"q" * 32).message_ok(value, sig)
    assert not SIGNER.message_ok(value, None) and not SIGNER.message_ok(value, b"\xff\xfe")


def test_definition_signature_covers_name_digest_and_pickle():
    blob = b"pickle bytes"
    digest = hashlib.sha256(blob).hexdigest()
    sig = SIGNER.sign_definition("a.task", digest, blob)
    assert SIGNER.definition_ok("a.task", digest, blob, sig)
    assert not SIGNER.definition_ok("other.task", digest, blob, sig)
    assert not SIGNER.definition_ok("a.task", digest, blob + b"!", sig)  # digest no longer matches
    planted = b"planted"
    planted_digest = hashlib.sha256(planted).hexdigest()
    assert not SIGNER.definition_ok("a.task", planted_digest, planted, sig)


def test_signature_domains_are_separate():
    """A message signature can never pass for a definition's, even over the same bytes."""
    blob = b"same bytes"
    digest = hashlib.sha256(blob).hexdigest()
    assert not SIGNER.definition_ok("n", digest, blob, SIGNER.sign_message(blob))


def test_secret_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "sub" / "cluster.key"
    first = load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first and len(first) >= 32
    path.write_bytes(b"short")
    with pytest.raises(ConfigError):
        load_or_create_secret(path)
    with pytest.raises(ConfigError):
        Signer(b"short")


# ---------------------------------------------------------------- input limits


@pytest.mark.parametrize(
    "value, expected", [(1, 0), ([], 1), ({"a": [1]}, 2), (nested(5), 5), ([1, [2, [3]], {"x": {"y": 1}}], 3)]
)
def test_depth_of(value, expected):
    assert depth_of(value, 100) == expected


def test_depth_of_stops_early_on_hostile_values():
    # Far past Python's recursion limit: counted without recursion, and only as far as needed.
    assert depth_of(nested(100_000), 16) == 17


def test_argument_checks():
    limits = Limits(max_payload_bytes=1024, max_result_bytes=1024, max_depth=4)
    assert check_arguments_shape([nested(4)], {"k": nested(4)}, limits) > 0
    with pytest.raises(ArgumentsTooDeep, match="argument 0"):
        check_arguments_shape([nested(5)], {}, limits)
    with pytest.raises(ArgumentsTooDeep, match="argument 'k'"):
        check_arguments_shape([], {"k": nested(5)}, limits)
    with pytest.raises(PayloadTooLarge):
        check_arguments_shape(["x" * 2000], {}, limits)
    with pytest.raises(InvalidTaskInput, match="must be JSON"):
        check_arguments_shape([float("nan")], {}, limits)
    with pytest.raises(InvalidTaskInput, match="must be JSON"):
        check_arguments_shape([{1, 2}], {}, limits)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), 8 * 86400, True, "5"])
def test_timeouts_outside_the_range(bad):
    with pytest.raises(InvalidTaskInput):
        check_timeout(bad)


def test_timeouts_inside_the_range():
    for good in (None, 0.001, 5, 7 * 86400):
        check_timeout(good)


def test_tags():
    check_tags(["a"] * 50)
    with pytest.raises(InvalidTaskInput):
        check_tags(["a"] * 51)
    with pytest.raises(InvalidTaskInput):
        check_tags(["x" * 101])
    with pytest.raises(InvalidTaskInput):
        check_tags([""])


def test_result_checks():
    limits = Limits(max_payload_bytes=1024, max_result_bytes=100, max_depth=3)
    encode_result({"a": [1, 2]}, limits)
    with pytest.raises(ResultTooLarge, match="RAYLANE_MAX_RESULT_BYTES"):
        encode_result("x" * 200, limits)
    with pytest.raises(ResultNotSerializable, match="RAYLANE_MAX_DEPTH"):
        encode_result(nested(4), limits)
    for bad in ({1}, float("inf"), object()):
        with pytest.raises(ResultNotSerializable, match="not JSON"):
            encode_result(bad, limits)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=30,
)


@settings(deadline=None)  # a shared machine's pauses are not the property's failures
@given(JSON_VALUES)
def test_the_size_floor_never_exceeds_the_encoded_size(value):
    encoded = len(json.dumps(value, allow_nan=False, separators=(",", ":")).encode())
    assert shape_of(value, math.inf, 1 << 30)[1] <= encoded
    # So a value that fits is never refused on the floor, even at the limit exactly.
    encode_result(value, Limits(max_result_bytes=encoded, max_depth=1000))


@settings(deadline=None)
@given(st.lists(JSON_VALUES, max_size=4), st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=4))
def test_arguments_that_fit_are_never_refused_on_the_floor(args, kwargs):
    encoded = len(json.dumps([args, kwargs], allow_nan=False, separators=(",", ":")).encode())
    limits = Limits(max_payload_bytes=encoded, max_depth=1000)
    assert check_arguments_shape(args, kwargs, limits) == encoded
    with pytest.raises(PayloadTooLarge):
        check_arguments_shape(args, kwargs, limits._replace(max_payload_bytes=encoded - 1))


class _Spy:
    """``json.dumps`` that notes the length of every text it is asked to encode."""

    def __init__(self, dumps):
        self.dumps, self.texts = dumps, []

    def __call__(self, value, **kw):
        self.texts += [len(v) for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
        return self.dumps(value, **kw)


def test_values_far_over_a_size_limit_are_refused_without_being_encoded(monkeypatch):
    """Encoding holds the GIL throughout: a worker encoding a huge result starves its lease's
    fence thread, which then ends the worker (seen as WorkerCrashedError instead of ResultTooLarge)."""
    spy = _Spy(json.dumps)
    monkeypatch.setattr(json, "dumps", spy)
    limits = Limits(max_payload_bytes=1000, max_result_bytes=1000, max_depth=3)
    with pytest.raises(ResultTooLarge, match="at least 1000002 bytes"):
        encode_result("x" * 1_000_000, limits)
    with pytest.raises(PayloadTooLarge, match="at least"):
        check_arguments_shape(["x" * 1_000_000], {}, limits)
    with pytest.raises(ResultTooLarge, match="at least"):
        encode_result(list(range(1_000_000)), limits)
    assert spy.texts == []
    encode_result("x" * 900, limits)  # under the limit, it is encoded and measured exactly
    assert spy.texts == [900]


def test_clip_text_keeps_the_end():
    assert clip_text("short") == "short" and clip_text(None) is None
    clipped = clip_text("a" * 50 + "END", limit=10)
    assert clipped.endswith("aaaaaaaEND") and clipped.startswith("[43 characters cut]")


def test_refusals_for_content_are_told_from_outages_and_conflicts():
    def outcome(status):
        return WriteOutcome("t", 1, False, "x", status)

    assert outcome(400).refused_for_content and outcome(413).refused_for_content
    for status in (409, 429, 500, 503, None):
        assert not outcome(status).refused_for_content
    assert not WriteOutcome("t", 1, True, None, 201).refused_for_content


# ---------------------------------------------------------------- per-token limits


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_the_burst_then_the_rate():
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(OverLimit) as exc:
        limiter.take("a")
    assert exc.value.retry_after_s == pytest.approx(0.5) and exc.value.retry_after_header == "1"
    limiter.take("b")  # another key has its own bucket
    clock.now += 0.5
    limiter.take("a")
    with pytest.raises(OverLimit):
        limiter.take("a")
    clock.now += 100
    for _ in range(3):  # refilled up to the burst, not beyond
        limiter.take("a")
    with pytest.raises(OverLimit):
        limiter.take("a")


def test_rate_limiter_memory_is_bounded():
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=10, clock=Clock())
    for i in range(100):
        limiter.take(f"k{i}")
    assert len(limiter._buckets) == 10


def test_concurrency_limiter():
    limiter = ConcurrencyLimiter(2)
    with limiter.hold("a"), limiter.hold("a"):
        with pytest.raises(OverLimit, match="at most 2 concurrent waits"), limiter.hold("a", "waits"):
            pass
        with limiter.hold("b"):
            assert limiter.held("b") == 1
        assert limiter.held("a") == 2
    assert limiter.held("a") == 0
    with pytest.raises(RuntimeError), limiter.hold("a"):
        raise RuntimeError("released on the way out")
    assert limiter.held("a") == 0


# ---------------------------------------------------------------- leases, on one clock


def test_lease_observer_judges_by_changes_it_saw():
    from raylane.actors.fencing import LeaseObserver

    clock = Clock()
    leases = LeaseObserver(ttl_s=10, clock=clock)
    assert not leases.lapsed("a") and not leases.renewed("a")  # nothing observed: nothing judged
    leases.observe({"a": 1, "b": 7})
    assert not leases.renewed("a")  # first sight is no evidence of renewal
    clock.now += 3
    leases.observe({"a": 2, "b": 7})
    assert leases.renewed("a") and not leases.renewed("b")
    clock.now += 8  # b unchanged for 11 s as seen here; a changed 8 s ago
    leases.observe({"a": 2, "b": 7})
    assert leases.lapsed("b") and not leases.lapsed("a")
    assert leases.lapsed("never-seen")  # judged from the first observation, 11 s ago
    clock.now += 2
    assert leases.lapsed("a") and not leases.renewed("a")
    assert leases.stale(older_than_s=12) == ["b"]
    leases.forget(["b"])
    assert leases.stale(older_than_s=12) == []


def test_lease_observer_takes_a_vouch_as_a_renewal_and_invents_no_move_after_it():
    from raylane.actors.fencing import LeaseObserver

    clock = Clock()
    leases = LeaseObserver(ttl_s=10, clock=clock)
    leases.vouch("a")  # a claim from a: alive now, its counter not read yet
    assert leases.renewed("a") and not leases.lapsed("a")
    clock.now += 4
    leases.observe({"a": 5})  # its first counter read is no move of its own
    clock.now += 7  # 11 s since the vouch, and no move seen
    assert leases.lapsed("a") and not leases.renewed("a")
    leases.vouch("a")
    leases.observe({"a": 5})  # the same counter after a vouch: still alive as of the vouch
    assert leases.renewed("a")
    clock.now += 10
    assert leases.lapsed("a")
    leases.observe({"a": 6})
    assert leases.renewed("a")
    leases.vouch(None)  # a record without an owner vouches for nobody


def test_lease_observer_never_compares_the_owners_clock():
    """A counter that jumps (the owner's wall clock went back, say) is still a renewal."""
    from raylane.actors.fencing import LeaseObserver

    clock = Clock()
    leases = LeaseObserver(ttl_s=10, clock=clock)
    leases.observe({"a": 100})
    clock.now += 9
    leases.observe({"a": 3})
    clock.now += 9
    assert not leases.lapsed("a")
