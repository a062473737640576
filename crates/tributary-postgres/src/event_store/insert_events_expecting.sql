-- The optimistic append in one round trip: inserts the batch only if the stream is at the
-- expected version ($2; -1 for any version), numbering the events after the stream's current
-- version. No row comes back when the expectation fails (the caller then finds out why); a
-- concurrent append taking the same versions fails on UNIQUE (stream_id, version).
INSERT INTO __SCHEMA__.events (
    tx_id, tx_ordinal, event_id, stream_id, version, event_type, source, subject, time,
    aggregate_type, partition_key, correlation_id, causation_id, traceparent, schema_version,
    data
)
SELECT pg_current_xact_id(), base.next + u.n - 1, u.event_id, $1, cur.version + u.n, u.event_type,
       u.source, u.subject, u.time, u.aggregate_type, u.partition_key, u.correlation_id,
       u.causation_id, u.traceparent, u.schema_version, u.data::json
FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[],
            $9::text[], $10::text[], $11::text[], $12::text[], $13::int4[], $14::text[])
     WITH ORDINALITY AS u(event_id, event_type, source, subject, time, aggregate_type,
                          partition_key, correlation_id, causation_id, traceparent,
                          schema_version, data, n)
CROSS JOIN (
    SELECT coalesce(max(tx_ordinal) + 1, 0) AS next
    FROM __SCHEMA__.events
    WHERE tx_id = pg_current_xact_id()
) AS base
CROSS JOIN (
    SELECT coalesce(max(version), 0) AS version FROM __SCHEMA__.events WHERE stream_id = $1
) AS cur
WHERE $2::bigint < 0 OR cur.version = $2::bigint
RETURNING tx_id::text::bigint, tx_ordinal, version
