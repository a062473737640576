SELECT EXISTS (SELECT 1 FROM __SCHEMA__.inbox WHERE consumer_group = $1 AND message_id = $2)
