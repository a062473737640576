SELECT version, state::text FROM __SCHEMA__.snapshots WHERE stream_id = $1
