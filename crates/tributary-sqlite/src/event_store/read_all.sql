SELECT position, stream_id, version, event_id, event_type, source, subject, time_ns,
       aggregate_type, partition_key, correlation_id, causation_id, traceparent,
       schema_version, data
FROM events
WHERE position >= ?1
ORDER BY position
LIMIT ?2
