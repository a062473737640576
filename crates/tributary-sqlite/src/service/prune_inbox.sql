DELETE FROM inbox
WHERE (consumer_group, message_id) IN (
    SELECT consumer_group, message_id FROM inbox WHERE processed_at < ?1 LIMIT ?2
)
