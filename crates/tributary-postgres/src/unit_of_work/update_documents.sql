-- Updates of documents the unit holds locked (it read them FOR UPDATE): every row exists and
-- no other unit can change it until this one ends. One row per (collection, id).
UPDATE __SCHEMA__.documents AS d
SET body = u.body::jsonb
FROM unnest($1::text[], $2::text[], $3::text[]) AS u(collection, id, body)
WHERE d.collection = u.collection AND d.id = u.id
