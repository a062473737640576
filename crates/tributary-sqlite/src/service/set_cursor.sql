INSERT INTO relay_cursors (name, position) VALUES (?1, ?2)
ON CONFLICT (name) DO UPDATE SET position = max(position, excluded.position)
