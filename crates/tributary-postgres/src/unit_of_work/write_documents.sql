-- Every put of the unit in one statement, in key order. `create` marks a document the unit
-- read as absent: it is inserted only if nobody created it meanwhile (the row is then not
-- returned, and the unit reports a conflict). The others are created or replaced (the
-- existing ones are locked and checked already).
INSERT INTO __SCHEMA__.documents AS d (collection, id, body, version)
SELECT u.collection, u.id, u.body::jsonb, CASE WHEN u.is_create THEN 0 ELSE 1 END
FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[]) AS u(collection, id, body, is_create)
ORDER BY u.collection, u.id
ON CONFLICT (collection, id) DO UPDATE
SET body = excluded.body, version = d.version + 1
WHERE excluded.version = 1
RETURNING d.collection, d.id
