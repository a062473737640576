-- The initial snapshot reached the broker whole: from now on the slot is the source.
-- $1: the table, $2: slot.
UPDATE $1
SET status = 'streaming', updated_at = now()
WHERE slot_name = $2 AND status = 'snapshot'
