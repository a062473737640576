-- The primary key columns of every table of the publications, in key order: the default
-- partition key of table events (pgoutput marks every column as key under REPLICA IDENTITY
-- FULL, so the Relation message cannot tell).
-- $1: the publication names as a list of literals.
SELECT pt.schemaname, pt.tablename, a.attname
FROM pg_catalog.pg_publication_tables pt
JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE pt.pubname IN ($1)
GROUP BY pt.schemaname, pt.tablename, a.attname, k.ord
ORDER BY pt.schemaname, pt.tablename, k.ord
