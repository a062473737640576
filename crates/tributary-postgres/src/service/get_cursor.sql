SELECT tx_id::text::bigint, tx_ordinal FROM __SCHEMA__.relay_cursors WHERE name = $1
