-- Deletes outbox rows the broker acknowledged. Safe with log capture even though ids are
-- taken at insert, not at commit: a committed row with a smaller id that is not yet
-- published is still in the WAL, which this delete does not touch, and a row of a
-- transaction still running is invisible here and is deleted by a later round.
-- $1: the outbox table, $2: its id column, $3: the highest published id.
DELETE FROM $1 WHERE $2 <= $3
