SELECT tx_id::text::bigint, tx_ordinal, stream_id, version, event_id, event_type, source,
       subject, time, aggregate_type, partition_key, correlation_id, causation_id, traceparent,
       schema_version, data::text
FROM __SCHEMA__.events
WHERE stream_id = $1 AND version >= $2
ORDER BY version
LIMIT $3
