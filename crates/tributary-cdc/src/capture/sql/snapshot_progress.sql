-- $1: the table, $2: slot, $3: rows the broker acknowledged.
UPDATE $1
SET snapshot_rows = snapshot_rows + $3, updated_at = now()
WHERE slot_name = $2
