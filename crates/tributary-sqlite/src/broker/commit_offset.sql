INSERT INTO group_offsets (consumer_group, topic, partition_no, committed) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (consumer_group, topic, partition_no)
DO UPDATE SET committed = max(committed, excluded.committed)
