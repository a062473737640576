SELECT coalesce(sum(length(payload)), 0), min(seq) FROM messages WHERE topic = ?1 AND partition_no = ?2
