-- How far the slot is behind the server. $1: slot. Columns as lags.sql.
SELECT pg_current_wal_lsn(),
       confirmed_flush_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
       wal_status,
       active_pid,
       slot_name
FROM pg_catalog.pg_replication_slots
WHERE slot_name = $1
