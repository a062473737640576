-- Cursors only move forward, even if a relay that lost its lease marks a batch late.
INSERT INTO __SCHEMA__.relay_cursors AS c (name, tx_id, tx_ordinal)
VALUES ($1, $2::text::xid8, $3)
ON CONFLICT (name) DO UPDATE SET tx_id = excluded.tx_id, tx_ordinal = excluded.tx_ordinal
WHERE (c.tx_id, c.tx_ordinal) < (excluded.tx_id, excluded.tx_ordinal)
