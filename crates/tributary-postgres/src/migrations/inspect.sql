-- Whether the schema exists, how many relations it holds, and whether it is Tributary's.
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
       (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1),
       EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND c.relname = 'tributary_migrations')
