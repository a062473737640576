-- Blind puts of a unit that read nothing, in key order, in autocommit: one statement, its own
-- transaction. Rows are locked in key order, so two such units never deadlock.
INSERT INTO __SCHEMA__.documents AS d (collection, id, body, version)
SELECT u.collection, u.id, u.body::jsonb, 1
FROM unnest($1::text[], $2::text[], $3::text[]) AS u(collection, id, body)
ORDER BY u.collection, u.id
ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body, version = d.version + 1
