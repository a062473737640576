SELECT id FROM __SCHEMA__.dead_letters
WHERE consumer_group = $1 AND message_key = $2 AND resolution IS NULL
ORDER BY id
LIMIT 1
