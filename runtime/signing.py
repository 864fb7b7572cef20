"""The cluster secret, and the signatures that let raylane trust what it reads back.

Kafka and OpenSearch are storage, not sources of code or of orders: anyone who can write to
them could plant a message, a pickled task definition, or a task record for a sweep to carry on.
raylane therefore signs, with a secret only the cluster holds, every queue message it produces,
every task definition it keeps in the store, and the order of every task it accepts (its
*seal*: what to run, with what, and how, the same for each of its attempts), and checks the
signature before it acts on any of them. A message that fails the check is dead-lettered; a
definition that fails it is never unpickled; a record whose seal fails it is never run again.

The secret is 32 random bytes kept in a file readable by its owner only (``RAYLANE_SECRET_FILE``,
by default ``<home>/cluster.key``, created on first use). Every process that deploys raylane
onto one cluster must use the same file, or what one signed the others refuse.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError

from raylane.errors import ConfigError
from raylane.models import TaskMessage, TaskRecord, order_bytes
from raylane.states import TaskState

if TYPE_CHECKING:
    from pydantic import SecretStr

Order = TypeVar("Order", TaskMessage, TaskRecord)

SIGNATURE_HEADER = "raylane-signature"
# The error type of a record ended because it does not bear the cluster's seal.
FORGED_RECORD = "ForgedRecord"
_SECRET_BYTES = 32


class Signer:
    """HMAC-SHA256 signatures under the cluster secret, one domain per kind of thing signed,
    so that a signature made for a message can never pass for one of a definition."""

    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ConfigError("the cluster secret must be at least 16 bytes")
        self._secret = secret

    @classmethod
    def of(cls, secret: SecretStr) -> Signer:
        """A signer under ``secret`` as configuration holds it."""
        return cls(secret.get_secret_value().encode())

    def _mac(self, domain: bytes, *parts: bytes) -> str:
        mac = hmac.new(self._secret, domain, hashlib.sha256)
        for part in parts:
            # Length-prefixed, so that moving bytes from one part to the next changes the signature.
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.hexdigest()

    def sign_message(self, value: bytes) -> str:
        """The signature of a queue message's bytes."""
        return self._mac(b"raylane/message/v1", value)

    def message_ok(self, value: bytes, signature: str | bytes | None) -> bool:
        """Whether ``signature`` is this cluster's signature of ``value``."""
        return _same(self.sign_message(value), signature)

    def sign_definition(self, name: str, digest: str, blob: bytes) -> str:
        """The signature of a pickled task definition kept under ``name``."""
        return self._mac(b"raylane/definition/v1", name.encode(), digest.encode(), blob)

    def definition_ok(self, name: str, digest: str, blob: bytes, signature: str | bytes | None) -> bool:
        """Whether ``signature`` is this cluster's signature of the definition, and ``digest``
        is the SHA-256 of ``blob``."""
        return hashlib.sha256(blob).hexdigest() == digest and _same(self.sign_definition(name, digest, blob), signature)

    def seal(self, order: TaskMessage | TaskRecord) -> str:
        """The seal of a task's order (``order_bytes``): made once, when the task is accepted,
        and carried unchanged by its messages and records from then on."""
        return self._mac(b"raylane/order/v1", order_bytes(order))

    def sealed(self, order: Order) -> Order:
        """A copy of ``order`` (a message or a record) that bears its seal."""
        return order.model_copy(update={"seal": self.seal(order)})

    def seal_ok(self, order: TaskMessage | TaskRecord) -> bool:
        """Whether ``order`` bears this cluster's seal of what it asks: a record planted in the
        store, or one whose arguments or options were changed there, does not."""
        if order.seal is None:
            return False
        try:
            return _same(self.seal(order), order.seal)
        except ValidationError:  # a record no message could carry: raylane made no such record
            return False

    def split(self, records: Iterable[TaskRecord]) -> tuple[list[TaskRecord], list[TaskRecord]]:
        """``records`` read from the store, as (those that bear the seal, those that do not)."""
        sealed: list[TaskRecord] = []
        forged: list[TaskRecord] = []
        for r in records:
            (sealed if self.seal_ok(r) else forged).append(r)
        return sealed, forged


def ended_as_forged(record: TaskRecord) -> TaskRecord:
    """The end of a record that does not bear the cluster's seal: FAILED, never retried. What it
    asks was not asked of raylane (or was changed in the store since), so none of it is run."""
    return record.moved_to(
        TaskState.FAILED,
        attempt=record.attempt + 1 if record.will_retry else record.attempt,
        will_retry=False,
        error_type=FORGED_RECORD,
        error="not run: the record does not bear this cluster's seal (it was written or changed outside raylane)",
    )


def _same(expected: str, given: str | bytes | None) -> bool:
    if given is None:
        return False
    if isinstance(given, bytes):
        try:
            given = given.decode("ascii")
        except UnicodeDecodeError:
            return False
    return hmac.compare_digest(expected, given)


def load_or_create_secret(path: Path) -> bytes:
    """The secret kept in ``path``, created (mode 0600) if the file does not exist yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = secrets.token_hex(_SECRET_BYTES).encode()
        try:
            # O_EXCL: two processes creating it at once end up with the same secret (the loser reads it).
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            data = path.read_bytes()
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(fresh)
            return fresh
    except OSError as e:
        raise ConfigError(f"cannot read the cluster secret {path}: {e}") from e
    data = data.strip()
    if len(data) < 16:
        raise ConfigError(f"the cluster secret in {path} is shorter than 16 bytes")
    return data
