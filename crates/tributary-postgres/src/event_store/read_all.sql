-- Events at (tx_id, tx_ordinal) >= ($1, $2) in reading order, only from transactions that
-- ended before the oldest one still running: nothing can later appear before them.
-- ORDER BY names the table's columns (e.), not the output columns of the same name, which
-- are bigint expressions: ordering by those would sort every row past the cursor, not read
-- the index in order.
SELECT tx_id::text::bigint, tx_ordinal, stream_id, version, event_id, event_type, source,
       subject, time, aggregate_type, partition_key, correlation_id, causation_id, traceparent,
       schema_version, data::text
FROM __SCHEMA__.events AS e
WHERE (tx_id, tx_ordinal) >= ($1::text::xid8, $2)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY e.tx_id, e.tx_ordinal
LIMIT $3
