-- DO NOTHING rather than an error: a failed statement would abort the whole unit.
INSERT INTO __SCHEMA__.inbox (consumer_group, message_id)
SELECT $1, id FROM unnest($2::uuid[]) AS id
ON CONFLICT (consumer_group, message_id) DO NOTHING
