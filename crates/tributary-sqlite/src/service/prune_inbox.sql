DELETE FROM inbox
WHERE (consumer_group, message_id) IN (
    SELECT consumer_group, message_id FROM inbox
    WHERE consumer_group = ?1 AND processed_at < ?2
    LIMIT ?3
)
