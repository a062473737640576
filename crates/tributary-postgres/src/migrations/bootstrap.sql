CREATE SCHEMA IF NOT EXISTS __SCHEMA__;
-- Which numbered migrations this schema has had.
CREATE TABLE IF NOT EXISTS __SCHEMA__.tributary_migrations (
    version     integer     PRIMARY KEY,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
