-- The service's own state as JSON documents.
CREATE TABLE documents (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    body       TEXT NOT NULL,   -- JSON
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;

-- Events waiting for the relay. Published rows are deleted. AUTOINCREMENT so that an id is
-- never reused after the table empties: a relay that lost its lease and deletes "up to id N"
-- late can then never delete rows written after its batch.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT NOT NULL,
    message_key TEXT NOT NULL,
    event_id    BLOB NOT NULL,   -- UUIDv7, 16 big-endian bytes
    payload     BLOB NOT NULL    -- the envelope as CloudEvents JSON
);

-- Messages each consumer group has processed (exactly-once effects).
CREATE TABLE inbox (
    consumer_group TEXT    NOT NULL,
    message_id     BLOB    NOT NULL,
    processed_at   INTEGER NOT NULL,   -- milliseconds since the Unix epoch
    PRIMARY KEY (consumer_group, message_id)
) WITHOUT ROWID;

CREATE INDEX inbox_by_time ON inbox (processed_at);

-- Messages a group gave up on, and those parked behind them to keep per-key order.
CREATE TABLE dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer_group  TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    partition_no    INTEGER NOT NULL,
    message_offset  INTEGER NOT NULL,
    message_id      BLOB,
    message_key     TEXT    NOT NULL,
    event_type      TEXT,
    payload         BLOB    NOT NULL,
    reason          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_at INTEGER NOT NULL,   -- milliseconds since the Unix epoch
    last_failed_at  INTEGER NOT NULL,
    parked_behind   INTEGER REFERENCES dead_letters (id),
    resolution      TEXT,               -- NULL while unresolved; 'replayed' or 'skipped'
    resolved_at     INTEGER
);

CREATE INDEX dead_letters_unresolved ON dead_letters (consumer_group, message_key, id)
    WHERE resolution IS NULL;

-- Positions of subscriptions and projections, stored with the data they cover.
CREATE TABLE checkpoints (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;

-- How far each event-store relay has published.
CREATE TABLE relay_cursors (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;
