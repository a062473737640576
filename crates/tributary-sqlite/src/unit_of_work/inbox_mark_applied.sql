INSERT INTO inbox (consumer_group, message_id, processed_at, applied, source_hash, correlation_hash)
VALUES (?1, ?2, ?3, 1, ?4, ?5)
ON CONFLICT (consumer_group, message_id) DO UPDATE SET applied = 1
