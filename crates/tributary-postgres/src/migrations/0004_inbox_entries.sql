-- What a consistency token asks of an inbox entry: whether the message was applied (a
-- dead-lettered or parked one was dealt with but not applied), and the hashed source and
-- correlation of the message, for follow-ups (see tributary_core::ConsistencyToken).
ALTER TABLE __SCHEMA__.inbox
    ADD COLUMN applied boolean NOT NULL DEFAULT true,
    ADD COLUMN source_hash bigint,
    ADD COLUMN correlation_hash bigint;
CREATE INDEX inbox_by_correlation ON __SCHEMA__.inbox (consumer_group, correlation_hash, source_hash)
WHERE correlation_hash IS NOT NULL;
