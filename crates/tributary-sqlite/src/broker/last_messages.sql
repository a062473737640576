-- The newest retained message of every partition of every topic: one descending probe of the
-- (topic, partition_no, seq) index per partition, never a scan of the log.
WITH RECURSIVE parts(topic, partition_no, partitions) AS (
    SELECT name, 0, partitions FROM topics
    UNION ALL
    SELECT topic, partition_no + 1, partitions FROM parts WHERE partition_no + 1 < partitions
)
SELECT m.topic, m.partition_no, m.seq, m.payload
FROM parts p
JOIN messages m ON m.seq = (
    SELECT max(seq) FROM messages
    WHERE topic = p.topic AND partition_no = p.partition_no
)
ORDER BY m.topic, m.partition_no
