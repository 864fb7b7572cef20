"""Cluster-wide switches kept in Ray's KV store (so no actor holds them alone): paused queues."""
from __future__ import annotations

_KV_NAMESPACE = "raylane"
_PAUSED = "paused:"


def pause(queue: str) -> None:
    """Stop consumers from taking new tasks of ``queue``; its tasks stay PENDING until resumed."""
    from ray.experimental import internal_kv as kv
    kv._internal_kv_put(_PAUSED + queue, b"1", overwrite=True, namespace=_KV_NAMESPACE)


def resume(queue: str) -> None:
    """Let consumers take tasks of ``queue`` again."""
    from ray.experimental import internal_kv as kv
    kv._internal_kv_del(_PAUSED + queue, namespace=_KV_NAMESPACE)


def paused() -> set[str]:
    """Names of the paused queues."""
    from ray.experimental import internal_kv as kv
    return {k.decode()[len(_PAUSED):] for k in kv._internal_kv_list(_PAUSED, namespace=_KV_NAMESPACE)}
