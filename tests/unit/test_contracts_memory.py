"""The seams' contract suites on the in-memory twins."""

from __future__ import annotations

import uuid

import pytest

from raylane.memory import InMemoryBroker, InMemoryQueueReader, InMemoryStore, InMemoryTaskQueue

from contracts import QueueContract, SchemaContract, StoreContract, VersionProperties


class TestInMemoryStore(StoreContract):
    @pytest.fixture
    def contract_store(self):
        return InMemoryStore()


class TestInMemorySchema(SchemaContract):
    @pytest.fixture
    def fresh_stores(self):
        store = InMemoryStore()
        return lambda n: [store] * n


class TestInMemoryVersions(VersionProperties):
    examples = 300

    @pytest.fixture
    def contract_store(self):
        return InMemoryStore()


class TestInMemoryQueue(QueueContract):
    @pytest.fixture
    def broker(self):
        return InMemoryBroker()

    @pytest.fixture
    def contract_queue(self, broker):
        return InMemoryTaskQueue(
            broker, prefix="t.", dlq_topic="dlq.x", partitions=2, max_payload_bytes=1 << 20, signer=self.signer
        )

    @pytest.fixture
    def drop_topic(self, broker):
        def drop(topic: str) -> None:
            with broker.cond:
                del broker.topics[topic]

        return drop

    @pytest.fixture
    def contract_reader(self, broker):
        def make(member=0, members=1, group=None, prefix="t."):
            return InMemoryQueueReader(
                broker, prefix=prefix, group=group or uuid.uuid4().hex, member=member, members=members
            )

        return make
