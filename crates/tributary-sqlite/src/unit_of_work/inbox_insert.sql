INSERT INTO inbox (consumer_group, message_id, processed_at, applied, source_hash, correlation_hash)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
