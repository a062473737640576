-- Everything up to the last row of a published batch. Rows at or below it all belong to
-- transactions that had ended when the batch was read, so they were all in the batch.
DELETE FROM __SCHEMA__.outbox WHERE (tx_id, tx_ordinal) <= ($1::text::xid8, $2)
