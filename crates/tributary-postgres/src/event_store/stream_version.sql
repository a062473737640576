SELECT coalesce(max(version), 0) FROM __SCHEMA__.events WHERE stream_id = $1
