-- Before an append: the stream's version, and whether the batch's first event is stored
-- already (a retry).
SELECT (SELECT coalesce(max(version), 0) FROM __SCHEMA__.events WHERE stream_id = $1),
       EXISTS (SELECT 1 FROM __SCHEMA__.events WHERE event_id = $2)
