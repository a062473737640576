-- A slot made elsewhere (for example by an operator) is taken over from where it is.
-- $1: the table, $2: slot, $3: system id, $4: database, $5: the slot's confirmed_flush_lsn.
INSERT INTO $1 (slot_name, system_id, database_name, status, consistent_point, position_limit)
VALUES ($2, $3, $4, 'streaming', $5::pg_lsn, greatest($5::pg_lsn, pg_current_wal_insert_lsn()))
RETURNING position_limit
