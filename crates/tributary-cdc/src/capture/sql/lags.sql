-- Every logical slot of this database and how far it is behind the server.
SELECT pg_current_wal_lsn(),
       confirmed_flush_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
       wal_status,
       active_pid,
       slot_name
FROM pg_catalog.pg_replication_slots
WHERE slot_type = 'logical' AND database = current_database()
ORDER BY slot_name
