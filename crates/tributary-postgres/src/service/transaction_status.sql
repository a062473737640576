-- Where each watched transaction is: 'in progress', 'committed', 'aborted', or NULL when the
-- server no longer knows (too old).
SELECT x, pg_xact_status(x::text::xid8) FROM unnest($1::bigint[]) AS x
