-- DO NOTHING rather than an error: a failed statement would abort the whole unit.
INSERT INTO __SCHEMA__.inbox (consumer_group, message_id, applied, source_hash, correlation_hash)
SELECT $1, m.id, m.applied, m.source_hash, m.correlation_hash
FROM unnest($2::uuid[], $3::bool[], $4::bigint[], $5::bigint[])
         AS m(id, applied, source_hash, correlation_hash)
ON CONFLICT (consumer_group, message_id) DO NOTHING
