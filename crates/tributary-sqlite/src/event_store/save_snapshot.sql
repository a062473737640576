INSERT INTO snapshots (stream_id, version, state) VALUES (?1, ?2, ?3)
ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = excluded.state
WHERE excluded.version >= snapshots.version
