SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
       (SELECT tx_id::text::bigint FROM __SCHEMA__.outbox
        WHERE tx_id >= pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY tx_id DESC
        LIMIT 1)
