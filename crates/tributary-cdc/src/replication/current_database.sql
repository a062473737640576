-- The database of the replication connection, to check a slot belongs to it.
SELECT pg_catalog.current_database()
