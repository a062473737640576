-- Events at (tx_id, tx_ordinal) >= ($1, $2) in reading order, only from transactions that
-- ended before the oldest one still running: nothing can later appear before them.
SELECT tx_id::text::bigint, tx_ordinal, stream_id, version, event_id, event_type, source,
       subject, time, aggregate_type, partition_key, correlation_id, causation_id, traceparent,
       schema_version, data::text
FROM __SCHEMA__.events
WHERE (tx_id, tx_ordinal) >= ($1::text::xid8, $2)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx_id, tx_ordinal
LIMIT $3
