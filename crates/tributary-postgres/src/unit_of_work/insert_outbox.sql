-- The row's ordinal is the next free one of this transaction (rows of other transactions
-- cannot carry this tx_id).
INSERT INTO __SCHEMA__.outbox (tx_id, tx_ordinal, topic, message_key, event_id, payload)
SELECT pg_current_xact_id(), coalesce(max(tx_ordinal) + 1, 0), $1, $2, $3, $4
FROM __SCHEMA__.outbox
WHERE tx_id = pg_current_xact_id()
RETURNING tx_id::text::bigint
