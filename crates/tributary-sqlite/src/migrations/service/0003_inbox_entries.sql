-- What a consistency token asks of an inbox entry: whether the message was applied (a
-- dead-lettered or parked one was dealt with but not applied), and the hashed source and
-- correlation of the message, for follow-ups (see tributary_core::ConsistencyToken).
ALTER TABLE inbox ADD COLUMN applied INTEGER NOT NULL DEFAULT 1;
ALTER TABLE inbox ADD COLUMN source_hash INTEGER;
ALTER TABLE inbox ADD COLUMN correlation_hash INTEGER;
CREATE INDEX inbox_by_correlation ON inbox (consumer_group, correlation_hash, source_hash)
WHERE correlation_hash IS NOT NULL;
