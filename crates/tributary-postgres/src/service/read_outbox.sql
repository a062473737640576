-- Outbox rows at (tx_id, tx_ordinal) >= ($1, $2) in reading order, only from transactions
-- that ended before the oldest one still running.
-- ORDER BY names the table's columns (o.), not the output columns of the same name, which
-- are bigint expressions: ordering by those would sort every row past the cursor, not read
-- the index in order.
SELECT tx_id::text::bigint, tx_ordinal, topic, message_key, event_id, payload
FROM __SCHEMA__.outbox AS o
WHERE (tx_id, tx_ordinal) >= ($1::text::xid8, $2)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY o.tx_id, o.tx_ordinal
LIMIT $3
