-- Locks the unit's documents that exist, in key order, so that two units locking overlapping
-- sets never wait for each other in a cycle; returns their versions for the unit to check.
SELECT d.collection, d.id, d.version FROM __SCHEMA__.documents AS d
WHERE (d.collection, d.id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
ORDER BY d.collection, d.id
FOR UPDATE
