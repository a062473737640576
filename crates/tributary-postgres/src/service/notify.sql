-- Announces commits to the schema's events or outbox on the channel `tributary.<schema>`.
-- Inside a transaction it is delivered at commit (and not at all on rollback).
SELECT pg_notify($1, $2)
