SELECT DISTINCT ON (message_key) message_key, id FROM __SCHEMA__.dead_letters
WHERE consumer_group = $1 AND message_key = ANY($2) AND resolution IS NULL
ORDER BY message_key, id
