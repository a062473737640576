INSERT INTO events (
    event_id, stream_id, version, event_type, source, subject, time_ns, aggregate_type,
    partition_key, correlation_id, causation_id, traceparent, schema_version, data
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
