INSERT INTO __SCHEMA__.dead_letters (
    consumer_group, topic, partition_no, message_offset, message_id, message_key, event_type,
    payload, reason, attempts, first_failed_at, last_failed_at, parked_behind
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, clock_timestamp(), $12)
RETURNING id
