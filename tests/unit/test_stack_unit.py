"""The local stack's JVM command lines, built without fetching or starting anything."""

from __future__ import annotations

from raylane.config import Settings
from raylane.stack.services import Kafka, OpenSearch


def _kafka_java(settings: Settings) -> list[str]:
    kafka = Kafka(settings)
    kafka._lib = settings.home / "kafka-libs"  # where prepare() would have put the jars
    return kafka._java()


def _opensearch_java_opts(settings: Settings) -> list[str]:
    return OpenSearch(settings)._java_opts().split()


def _settings(tmp_path, **changes) -> Settings:
    return Settings(home=tmp_path, opensearch_root_dir=tmp_path / "os", **changes)


def test_both_jvms_compile_with_c1_only_by_default(tmp_path):
    settings = _settings(tmp_path)
    assert "-XX:TieredStopAtLevel=1" in _kafka_java(settings)
    assert "-XX:TieredStopAtLevel=1" in _opensearch_java_opts(settings)


def test_the_jvm_options_are_the_operators_to_set(tmp_path):
    settings = _settings(tmp_path, stack_jvm_options=" -XX:+UseSerialGC  -Dx=1 ")
    # Both JVMs get the same options, split the same way (OpenSearch's start script splits on spaces).
    for options in (_kafka_java(settings), _opensearch_java_opts(settings)):
        assert options[options.index("-XX:+UseSerialGC") + 1] == "-Dx=1"
    plain = _settings(tmp_path, stack_jvm_options="")
    assert not any(o.startswith("-XX:Tiered") for o in _kafka_java(plain) + _opensearch_java_opts(plain))
