-- Serializes concurrent migrations of one schema (released at commit).
SELECT pg_advisory_xact_lock(hashtextextended('tributary migrations ' || $1, 0))
