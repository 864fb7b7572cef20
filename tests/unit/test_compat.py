"""Each shim of raylane.compat: the private internal it relies on is still there, shaped as used."""

from __future__ import annotations

import inspect

from kafka.producer.record_accumulator import RecordAccumulator
from kafka.structs import TopicPartition

from raylane import compat


def test_ray_internal_kv_functions_take_what_the_shims_pass():
    from ray.experimental import internal_kv

    for fn, params in (
        (internal_kv._internal_kv_put, {"key", "value", "overwrite", "namespace"}),
        (internal_kv._internal_kv_get, {"key", "namespace"}),
        (internal_kv._internal_kv_list, {"prefix", "namespace"}),
        (internal_kv._internal_kv_del, {"key", "namespace"}),
    ):
        assert params <= set(inspect.signature(fn).parameters), fn.__name__


def test_ray_token_auth_and_dashboard_url_exist():
    from ray._private import worker
    from ray._private.authentication import authentication_token_setup

    assert callable(authentication_token_setup._enable_token_auth)
    assert not inspect.signature(authentication_token_setup._enable_token_auth).parameters
    assert callable(worker.get_dashboard_url)


def test_forget_empty_partitions_drops_only_empty_queues():
    acc = RecordAccumulator()
    assert isinstance(acc._batches, dict) and callable(acc._tp_lock)
    empty, busy = TopicPartition("t", 0), TopicPartition("t", 1)
    acc._batches[empty] = []
    acc._batches[busy] = ["a batch"]

    class Producer:
        _accumulator = acc

    compat.forget_empty_partitions(Producer())
    assert list(acc._batches) == [busy]
    with acc._tp_lock(busy):  # a lock per partition, as the shim takes it
        pass


def test_forget_empty_partitions_leaves_an_unknown_producer_alone():
    compat.forget_empty_partitions(object())  # no _accumulator: nothing to do, and no error


def _cluster_after_update(known: set[str], tracked: set[str]):
    from kafka.cluster import ClusterMetadata

    cluster = ClusterMetadata()
    assert isinstance(cluster._topics, set) and isinstance(cluster._partitions, dict)
    cluster._topics = set(tracked)
    cluster._partitions = {t: {} for t in known}
    return cluster


def _update(cluster) -> None:
    for listener in list(cluster._listeners):  # as update_metadata calls them
        listener(cluster)


def test_forget_deleted_topics_drops_a_topic_unknown_for_long_enough_with_nothing_to_send():
    acc = RecordAccumulator()
    cluster = _cluster_after_update(known={"kept"}, tracked={"kept", "gone", "busy"})
    acc._batches[TopicPartition("busy", 0)] = ["a batch"]  # still to be sent: its topic stays asked for

    class Producer:
        _metadata = cluster
        _accumulator = acc

    compat.forget_deleted_topics(Producer(), after_s=0.0)
    _update(cluster)
    assert cluster._topics == {"kept", "busy"}


def test_forget_deleted_topics_waits_out_a_topic_just_made():
    cluster = _cluster_after_update(known=set(), tracked={"new"})

    class Producer:
        _metadata = cluster
        _accumulator = RecordAccumulator()

    compat.forget_deleted_topics(Producer(), after_s=60.0)
    _update(cluster)
    _update(cluster)
    assert cluster._topics == {"new"}  # a send may still be waiting for its metadata


def test_forget_deleted_topics_leaves_an_unknown_producer_alone():
    compat.forget_deleted_topics(object(), after_s=0.0)  # no _metadata: nothing to do, and no error
