SELECT stream_id, version, position FROM events WHERE event_id = ?1
