-- Raises the recorded limit to at least $3 before the capture confirms $3 to the slot. The
-- current insert position is taken rather than just $3, so that the following confirmations
-- need no write until the stream catches up with it; it is still below the consistent point
-- of any slot created later, which is what the recreation check relies on.
-- $1: the table, $2: slot, $3: the position about to be confirmed.
UPDATE $1
SET position_limit = greatest(position_limit, $3::pg_lsn, pg_current_wal_insert_lsn()),
    updated_at = now()
WHERE slot_name = $2 AND status = 'streaming'
RETURNING position_limit
