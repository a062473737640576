-- The event store. `__SCHEMA__` is replaced by the service's quoted schema name.
--
-- Reading order is (tx_id, tx_ordinal): the id of the writing transaction (xid8, taken with
-- pg_current_xact_id()) and the row's number within that transaction. Readers only read rows
-- with tx_id below the snapshot's xmin, so no transaction still running can later add a row
-- below what they already read (see position.rs). Never read by a sequence value: sequence
-- values are taken at insert, not at commit, and a smaller one can commit later.
CREATE TABLE __SCHEMA__.events (
    tx_id          xid8        NOT NULL,
    tx_ordinal     integer     NOT NULL CHECK (tx_ordinal BETWEEN 0 AND 1048575),
    event_id       uuid        NOT NULL,
    stream_id      text        NOT NULL,
    version        bigint      NOT NULL CHECK (version > 0),  -- 1 for a stream's first event
    event_type     text        NOT NULL,
    source         text        NOT NULL,
    subject        text,
    time           timestamptz NOT NULL,
    aggregate_type text,
    partition_key  text,
    correlation_id text,
    causation_id   text,
    traceparent    text,
    schema_version integer     NOT NULL,
    data           json        NOT NULL,  -- json, not jsonb: the exact text is kept
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_in_reading_order PRIMARY KEY (tx_id, tx_ordinal),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

-- Events are append-only: a reader that passed a row must be able to trust it forever.
CREATE FUNCTION __SCHEMA__.tributary_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: they cannot be changed or deleted';
END;
$$;

CREATE TRIGGER events_are_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON __SCHEMA__.events
    FOR EACH STATEMENT EXECUTE FUNCTION __SCHEMA__.tributary_append_only();

CREATE TABLE __SCHEMA__.snapshots (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL,
    state     json   NOT NULL
);
