DELETE FROM group_offsets WHERE consumer_group = ?1 AND topic = ?2
