-- A unit that read nothing and holds puts and events, in autocommit: one statement (so one
-- transaction and one round trip) writes both, the documents in key order and the events in
-- publish order.
WITH documents AS (
    INSERT INTO __SCHEMA__.documents AS d (collection, id, body, version)
    SELECT u.collection, u.id, u.body::jsonb, 1
    FROM unnest($1::text[], $2::text[], $3::text[]) AS u(collection, id, body)
    ORDER BY u.collection, u.id
    ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body, version = d.version + 1
    RETURNING 1
)
INSERT INTO __SCHEMA__.outbox (tx_id, tx_ordinal, topic, message_key, event_id, payload)
SELECT pg_current_xact_id(), m.n - 1, m.topic, m.message_key, m.event_id, m.payload
FROM unnest($4::text[], $5::text[], $6::uuid[], $7::bytea[])
         WITH ORDINALITY AS m(topic, message_key, event_id, payload, n)
ORDER BY m.n
