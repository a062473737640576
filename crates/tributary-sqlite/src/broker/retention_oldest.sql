-- The oldest consumed messages of a partition, to get it under its size limit.
DELETE FROM messages
WHERE seq IN (
    SELECT m.seq FROM messages m
    WHERE m.topic = ?1 AND m.partition_no = ?2
      AND m.seq <= coalesce(
            (SELECT min(committed) FROM group_offsets g
             WHERE g.topic = ?1 AND g.partition_no = ?2),
            9223372036854775807)
    ORDER BY m.seq
    LIMIT ?3
)
