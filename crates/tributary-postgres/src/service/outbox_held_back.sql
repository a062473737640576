SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
       (SELECT tx_id::text::bigint FROM __SCHEMA__.outbox AS t
        WHERE tx_id >= pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY t.tx_id DESC  -- the column, not the output (see read_outbox.sql)
        LIMIT 1)
