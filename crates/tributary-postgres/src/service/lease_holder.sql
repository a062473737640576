-- Who holds a lease (lease.sql): the session holding the advisory lock on the key, as
-- pg_locks shows a bigint key (high 32 bits in classid, low 32 in objid, objsubid 1).
-- Reads only: a session holding the lock is found without anyone taking it. $1: the key.
WITH k AS (SELECT hashtextextended($1, 0) AS key)
SELECT a.pid, host(a.client_addr), a.client_port, a.backend_start
FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
CROSS JOIN k
WHERE l.locktype = 'advisory'
  AND l.granted
  AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
  AND l.classid::bigint = (k.key >> 32) & 4294967295
  AND l.objid::bigint = k.key & 4294967295
ORDER BY a.backend_start
LIMIT 1
