-- The event store. `position` is the global order: AUTOINCREMENT so a position is never
-- reused after a delete, and with one writer at a time positions grow in commit order.
CREATE TABLE events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       BLOB    NOT NULL UNIQUE,   -- UUIDv7 as 16 big-endian bytes
    stream_id      TEXT    NOT NULL,
    version        INTEGER NOT NULL,          -- 1 for a stream's first event
    event_type     TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    subject        TEXT,
    time_ns        INTEGER NOT NULL,          -- nanoseconds since the Unix epoch, UTC
    aggregate_type TEXT,
    partition_key  TEXT,
    correlation_id TEXT,
    causation_id   TEXT,
    traceparent    TEXT,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,          -- JSON
    UNIQUE (stream_id, version)
);

CREATE TABLE snapshots (
    stream_id TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL,
    state     TEXT    NOT NULL
) WITHOUT ROWID;
