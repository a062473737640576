-- Locks the row: a unit that read a document holds it until it commits, so two units cannot
-- both update from the same old value.
SELECT body::text FROM __SCHEMA__.documents WHERE collection = $1 AND id = $2 FOR UPDATE
