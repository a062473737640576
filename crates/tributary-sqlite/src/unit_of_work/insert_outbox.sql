INSERT INTO outbox (topic, message_key, event_id, payload) VALUES (?1, ?2, ?3, ?4)
