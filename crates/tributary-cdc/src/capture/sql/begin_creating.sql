-- Written before the slot is created, so a crash between the two is recognised as an
-- unfinished creation (the slot may be dropped and made again) rather than a lost slot.
-- $1: the table, $2: slot, $3: system id, $4: database, $5: 'creating' or 'snapshot'.
INSERT INTO $1 (slot_name, system_id, database_name, status)
VALUES ($2, $3, $4, $5)
ON CONFLICT (slot_name) DO UPDATE
SET system_id = EXCLUDED.system_id,
    database_name = EXCLUDED.database_name,
    status = EXCLUDED.status,
    consistent_point = NULL,
    position_limit = NULL,
    snapshot_rows = 0,
    created_at = now(),
    updated_at = now()
