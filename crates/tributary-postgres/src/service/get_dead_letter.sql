SELECT id, consumer_group, topic, partition_no, message_offset, message_id, message_key,
       event_type, payload, reason, attempts, first_failed_at, last_failed_at, parked_behind
FROM __SCHEMA__.dead_letters
WHERE id = $1
