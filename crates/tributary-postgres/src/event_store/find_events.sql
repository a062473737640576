SELECT event_id, stream_id, version, tx_id::text::bigint, tx_ordinal
FROM __SCHEMA__.events
WHERE event_id = ANY($1)
