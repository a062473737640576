-- The oldest running transaction that has a transaction id: the one that sets the xmin
-- (prepared transactions aside). pg_stat_activity covers every database of the cluster.
SELECT pid, datname, state, extract(epoch FROM clock_timestamp() - xact_start)::float8,
       left(query, 200)
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
ORDER BY age(backend_xid) DESC
LIMIT 1
