-- The operator's re-snapshot: drop the slot if it is there and forget it.
-- $1: the table, $2: slot.
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $2;
DELETE FROM $1 WHERE slot_name = $2
