-- Whether a group applied a message of the given source and correlation created after ?4.
SELECT 1 FROM inbox
WHERE consumer_group = ?1 AND correlation_hash = ?2 AND source_hash = ?3
  AND message_id > ?4 AND applied = 1
LIMIT 1
