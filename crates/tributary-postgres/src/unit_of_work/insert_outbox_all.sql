-- Several rows of one transaction in one statement, numbered after the rows it already has,
-- in the order of the arrays.
INSERT INTO __SCHEMA__.outbox (tx_id, tx_ordinal, topic, message_key, event_id, payload)
SELECT pg_current_xact_id(), next.ordinal + m.n - 1, m.topic, m.message_key, m.event_id, m.payload
FROM unnest($1::text[], $2::text[], $3::uuid[], $4::bytea[])
         WITH ORDINALITY AS m(topic, message_key, event_id, payload, n),
     (SELECT coalesce(max(tx_ordinal) + 1, 0) AS ordinal
      FROM __SCHEMA__.outbox
      WHERE tx_id = pg_current_xact_id()) AS next
ORDER BY m.n
