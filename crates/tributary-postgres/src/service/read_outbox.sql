-- Outbox rows at (tx_id, tx_ordinal) >= ($1, $2) in reading order, only from transactions
-- that ended before the oldest one still running.
SELECT tx_id::text::bigint, tx_ordinal, topic, message_key, event_id, payload
FROM __SCHEMA__.outbox
WHERE (tx_id, tx_ordinal) >= ($1::text::xid8, $2)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx_id, tx_ordinal
LIMIT $3
