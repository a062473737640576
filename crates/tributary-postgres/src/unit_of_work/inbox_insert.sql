-- DO NOTHING rather than an error: a failed statement would abort the whole unit.
INSERT INTO __SCHEMA__.inbox (consumer_group, message_id, applied, source_hash, correlation_hash)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (consumer_group, message_id) DO NOTHING
