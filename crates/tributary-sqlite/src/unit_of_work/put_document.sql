INSERT INTO documents (collection, id, body) VALUES (?1, ?2, ?3)
ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body
