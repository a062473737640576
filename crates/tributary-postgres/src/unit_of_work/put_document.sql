INSERT INTO __SCHEMA__.documents (collection, id, body) VALUES ($1, $2, $3::jsonb)
ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body
