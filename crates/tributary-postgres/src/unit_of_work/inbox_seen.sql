SELECT message_id FROM __SCHEMA__.inbox WHERE consumer_group = $1 AND message_id = ANY($2)
