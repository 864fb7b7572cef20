"""raylane: asynchronous tasks on Ray, queued in Kafka, tracked in OpenSearch."""
