DELETE FROM __SCHEMA__.inbox
WHERE (consumer_group, message_id) IN (
    SELECT consumer_group, message_id FROM __SCHEMA__.inbox WHERE processed_at < $1 LIMIT $2
)
