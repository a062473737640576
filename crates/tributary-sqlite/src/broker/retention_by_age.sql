-- Old messages every group of the partition has committed (all of them if no group reads it).
DELETE FROM messages
WHERE seq IN (
    SELECT m.seq FROM messages m
    WHERE m.topic = ?1 AND m.partition_no = ?2 AND m.stored_at < ?3
      AND m.seq <= coalesce(
            (SELECT min(committed) FROM group_offsets g
             WHERE g.topic = ?1 AND g.partition_no = ?2),
            9223372036854775807)
    ORDER BY m.seq
    LIMIT ?4
)
