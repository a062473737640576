DELETE FROM __SCHEMA__.inbox WHERE consumer_group = $1
