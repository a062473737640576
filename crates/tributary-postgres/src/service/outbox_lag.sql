SELECT count(*) FILTER (WHERE tx_id < h.xmin),
       count(*) FILTER (WHERE tx_id >= h.xmin),
       extract(epoch FROM clock_timestamp() - min(recorded_at))::float8
FROM __SCHEMA__.outbox, (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) AS h
