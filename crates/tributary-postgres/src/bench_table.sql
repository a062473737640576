CREATE SCHEMA __SCHEMA__;
-- A bare table: an identity key and a payload, nothing of Tributary's.
CREATE TABLE __SCHEMA__.bare (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload bytea  NOT NULL
);
