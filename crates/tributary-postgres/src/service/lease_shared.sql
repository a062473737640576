-- The shared form of lease.sql: any number of sessions hold it together; an exclusive
-- holder excludes them all.
SELECT pg_try_advisory_lock_shared(hashtextextended($1, 0))
