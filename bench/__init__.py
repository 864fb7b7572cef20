"""raylane's benchmark suite (``raylane bench``, ``make bench``): numbers, never assertions.

Runs in one sequence on one machine: raw Ray no-op tasks, Celery on a Redis broker, and
raylane end to end (throughput of a burst, latencies, CPU per task over every process,
OpenSearch requests per state transition, Kafka bytes per task), then how cost grows with
the number of records and of consumers. Writes ``<RAYLANE_HOME>/bench/latest.json``, ``.md`` and
``.png``.
"""
