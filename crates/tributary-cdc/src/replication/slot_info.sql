-- One replication slot, as ReplicationConnection::slot reads it (SlotInfo::from_row reads the
-- columns by position). Runs on the replication connection with the simple query protocol,
-- which has no bind parameters: $1 is replaced by the quoted slot name, which SlotName has
-- already restricted to [a-z0-9_].
SELECT slot_name,
       plugin,
       database,
       temporary,
       active_pid,
       restart_lsn,
       confirmed_flush_lsn,
       wal_status
FROM pg_catalog.pg_replication_slots
WHERE slot_name = $1
