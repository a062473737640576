-- The follow-ups (by position in the arrays) the group has not applied: no applied message
-- of that source and correlation created after the write.
SELECT f.n
FROM unnest($2::bigint[], $3::bigint[], $4::uuid[]) WITH ORDINALITY AS f(correlation_hash, source_hash, after, n)
WHERE NOT EXISTS (SELECT 1 FROM __SCHEMA__.inbox AS i
                  WHERE i.consumer_group = $1 AND i.correlation_hash = f.correlation_hash
                    AND i.source_hash = f.source_hash AND i.message_id > f.after AND i.applied)
