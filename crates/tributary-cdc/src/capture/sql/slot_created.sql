-- The slot exists and starts at its consistent point.
-- $1: the table, $2: slot, $3: 'snapshot' or 'streaming', $4: the consistent point.
UPDATE $1
SET status = $3,
    consistent_point = $4::pg_lsn,
    position_limit = $4::pg_lsn,
    snapshot_rows = 0,
    updated_at = now()
WHERE slot_name = $2
