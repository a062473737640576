-- A heartbeat: a non-transactional logical message, which the slot's stream delivers at once
-- and the capture may confirm when nothing is in flight, then the limit raised past it.
-- Returns the message's LSN, then (while streaming) the new limit.
-- $1: the table, $2: slot.
SELECT pg_logical_emit_message(false, 'tributary-heartbeat', $2);
UPDATE $1
SET position_limit = greatest(position_limit, pg_current_wal_insert_lsn()),
    updated_at = now()
WHERE slot_name = $2 AND status = 'streaming'
RETURNING position_limit
