DELETE FROM inbox WHERE consumer_group = ?1
