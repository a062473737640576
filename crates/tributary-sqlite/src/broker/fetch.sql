SELECT seq, message_key, message_id, payload FROM messages
WHERE topic = ?1 AND partition_no = ?2 AND seq > ?3
ORDER BY seq
LIMIT ?4
