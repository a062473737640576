-- For each message id: whether the group dealt with it (a row) and applied it. One index
-- probe per id.
SELECT w.n, i.applied
FROM unnest($2::uuid[]) WITH ORDINALITY AS w(id, n)
LEFT JOIN LATERAL (SELECT applied FROM __SCHEMA__.inbox
                   WHERE consumer_group = $1 AND message_id = w.id) AS i ON true
