-- The record of one slot. $1: the table, $2: the slot name.
SELECT system_id, database_name, status, consistent_point, position_limit, snapshot_rows
FROM $1
WHERE slot_name = $2
