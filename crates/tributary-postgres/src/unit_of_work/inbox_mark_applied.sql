-- A message dealt with before without being applied (a replayed dead letter) is applied now.
INSERT INTO __SCHEMA__.inbox (consumer_group, message_id, applied, source_hash, correlation_hash)
VALUES ($1, $2, true, $3, $4)
ON CONFLICT (consumer_group, message_id) DO UPDATE SET applied = true
