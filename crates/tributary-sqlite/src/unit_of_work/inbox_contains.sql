SELECT 1 FROM inbox WHERE consumer_group = ?1 AND message_id = ?2
