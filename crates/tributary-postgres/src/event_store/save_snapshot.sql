INSERT INTO __SCHEMA__.snapshots AS s (stream_id, version, state) VALUES ($1, $2, $3::json)
ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = excluded.state
WHERE excluded.version >= s.version
