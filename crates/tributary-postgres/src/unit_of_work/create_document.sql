-- For a document the unit read as absent: if another unit created it meanwhile, nothing is
-- inserted (after waiting for that unit to commit) and the caller reports a conflict.
INSERT INTO __SCHEMA__.documents (collection, id, body) VALUES ($1, $2, $3::jsonb)
ON CONFLICT (collection, id) DO NOTHING
