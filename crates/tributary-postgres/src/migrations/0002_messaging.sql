-- The service's own state as JSON documents.
CREATE TABLE __SCHEMA__.documents (
    collection text  NOT NULL,
    id         text  NOT NULL,
    body       jsonb NOT NULL,
    PRIMARY KEY (collection, id)
);

-- Events waiting for the relay; published rows are deleted. Read in (tx_id, tx_ordinal)
-- order below the snapshot xmin, like the events. `id` is the insertion order, for operators
-- only: reading by it would lose rows (a smaller id can commit after a larger one).
CREATE TABLE __SCHEMA__.outbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    tx_id       xid8        NOT NULL,
    tx_ordinal  integer     NOT NULL CHECK (tx_ordinal BETWEEN 0 AND 1048575),
    topic       text        NOT NULL,
    message_key text        NOT NULL,
    event_id    uuid        NOT NULL,
    payload     bytea       NOT NULL,  -- the envelope as CloudEvents JSON
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT outbox_in_reading_order PRIMARY KEY (tx_id, tx_ordinal)
);

-- Messages each consumer group has processed (exactly-once effects).
CREATE TABLE __SCHEMA__.inbox (
    consumer_group text        NOT NULL,
    message_id     uuid        NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, message_id)
);

CREATE INDEX inbox_by_time ON __SCHEMA__.inbox (processed_at);

-- Messages a group gave up on, and those parked behind them to keep per-key order.
CREATE TABLE __SCHEMA__.dead_letters (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition_no    bigint      NOT NULL,
    message_offset  bigint      NOT NULL,
    message_id      uuid,
    message_key     text        NOT NULL,
    event_type      text,
    payload         bytea       NOT NULL,
    reason          text        NOT NULL,
    attempts        bigint      NOT NULL,
    first_failed_at timestamptz NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    parked_behind   bigint      REFERENCES __SCHEMA__.dead_letters (id),
    resolution      text,  -- NULL while unresolved; 'replayed' or 'skipped'
    resolved_at     timestamptz
);

CREATE INDEX dead_letters_unresolved ON __SCHEMA__.dead_letters (consumer_group, message_key, id)
    WHERE resolution IS NULL;

-- Positions of subscriptions and projections, stored with the data they cover. A position is
-- an unsigned 64-bit number stored bit for bit in a bigint.
CREATE TABLE __SCHEMA__.checkpoints (
    name     text   PRIMARY KEY,
    position bigint NOT NULL
);

-- How far each event-store relay has published: the (tx_id, tx_ordinal) of the last event.
CREATE TABLE __SCHEMA__.relay_cursors (
    name       text    PRIMARY KEY,
    tx_id      xid8    NOT NULL,
    tx_ordinal integer NOT NULL
);
