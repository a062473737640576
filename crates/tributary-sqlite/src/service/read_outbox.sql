SELECT id, topic, message_key, event_id, payload FROM outbox ORDER BY id LIMIT ?1
