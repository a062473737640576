-- Committed events at or after ($1, $2): readable now, and held back by a running
-- transaction; and how long the oldest of them has waited.
SELECT count(*) FILTER (WHERE tx_id < h.xmin),
       count(*) FILTER (WHERE tx_id >= h.xmin),
       extract(epoch FROM clock_timestamp() - min(recorded_at))::float8
FROM __SCHEMA__.events, (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) AS h
WHERE (tx_id, tx_ordinal) >= ($1::text::xid8, $2)
