-- Messages of one partition after a committed offset (the seq index makes it a range count).
SELECT count(*) FROM messages
WHERE topic = ?1 AND partition_no = ?2 AND seq > ?3
