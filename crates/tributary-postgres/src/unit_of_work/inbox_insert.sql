-- DO NOTHING rather than an error: a failed statement would abort the whole unit.
INSERT INTO __SCHEMA__.inbox (consumer_group, message_id) VALUES ($1, $2)
ON CONFLICT (consumer_group, message_id) DO NOTHING
