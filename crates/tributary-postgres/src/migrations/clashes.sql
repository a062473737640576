-- The relations of `schema` whose names Tributary's migrations would create.
SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = ANY($2)
ORDER BY c.relname
