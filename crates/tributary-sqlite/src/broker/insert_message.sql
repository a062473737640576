INSERT INTO messages (topic, partition_no, message_id, message_key, payload, stored_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (topic, message_id) DO NOTHING
