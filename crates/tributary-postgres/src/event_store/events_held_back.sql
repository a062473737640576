-- The horizon now, and the newest transaction whose committed events wait behind it.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
       (SELECT tx_id::text::bigint FROM __SCHEMA__.events AS t
        WHERE tx_id >= pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY t.tx_id DESC  -- the column, not the output (see read_outbox.sql)
        LIMIT 1)
