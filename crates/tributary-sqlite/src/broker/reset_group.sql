-- Each partition's committed offset goes just before its oldest retained message.
UPDATE group_offsets
SET committed = coalesce(
    (SELECT min(m.seq) - 1 FROM messages m
     WHERE m.topic = group_offsets.topic AND m.partition_no = group_offsets.partition_no),
    committed)
WHERE consumer_group = ?1 AND topic = ?2
