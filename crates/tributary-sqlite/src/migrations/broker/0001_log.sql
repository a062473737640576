-- The embedded broker's log.
CREATE TABLE topics (
    name       TEXT    PRIMARY KEY,
    partitions INTEGER NOT NULL CHECK (partitions > 0)
) WITHOUT ROWID;

-- `seq` is the offset of a message in its partition (offsets are not dense per partition).
-- AUTOINCREMENT matters here: retention deletes old rows, and a reused seq would sit below
-- offsets that groups already committed, so they would never see the new message.
CREATE TABLE messages (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic        TEXT    NOT NULL,
    partition_no INTEGER NOT NULL,
    message_id   BLOB    NOT NULL,   -- the envelope id (UUIDv7): deduplication key
    message_key  TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    stored_at    INTEGER NOT NULL    -- milliseconds since the Unix epoch
);

CREATE INDEX messages_by_partition ON messages (topic, partition_no, seq);

-- A message id is stored once per topic while it is retained.
CREATE UNIQUE INDEX messages_dedup ON messages (topic, message_id);

-- Each group's committed offset per partition: everything up to it is done.
CREATE TABLE group_offsets (
    consumer_group TEXT    NOT NULL,
    topic          TEXT    NOT NULL,
    partition_no   INTEGER NOT NULL,
    committed      INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition_no)
) WITHOUT ROWID;
