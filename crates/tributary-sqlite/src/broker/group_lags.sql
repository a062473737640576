-- Every group's committed offset per partition and the messages after it (each count is a
-- range of the (topic, partition_no, seq) index).
SELECT g.consumer_group, g.topic, g.partition_no,
       (SELECT count(*) FROM messages m
        WHERE m.topic = g.topic AND m.partition_no = g.partition_no AND m.seq > g.committed)
FROM group_offsets g
ORDER BY g.consumer_group, g.topic, g.partition_no
