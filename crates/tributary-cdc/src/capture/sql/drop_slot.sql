-- Drops an unfinished slot (creation or snapshot interrupted) before making it again.
-- $1: slot.
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1
