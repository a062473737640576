-- A new group starts before the oldest retained message of the partition.
INSERT INTO group_offsets (consumer_group, topic, partition_no, committed)
VALUES (?1, ?2, ?3, coalesce((SELECT min(seq) - 1 FROM messages WHERE topic = ?2 AND partition_no = ?3), 0))
ON CONFLICT (consumer_group, topic, partition_no) DO NOTHING
