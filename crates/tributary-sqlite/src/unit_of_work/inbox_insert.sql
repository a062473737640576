INSERT INTO inbox (consumer_group, message_id, processed_at) VALUES (?1, ?2, ?3)
