-- The capture's record of its slot, one row per slot, in the captured database itself: it
-- shares the fate of the data (a restored or failed-over database brings the record but not
-- the slot, which is then reported as missing instead of silently recreated).
-- $1: the qualified table name.
CREATE TABLE IF NOT EXISTS $1 (
    slot_name        text PRIMARY KEY,
    -- The cluster (IDENTIFY_SYSTEM) and database the slot belongs to.
    system_id        text NOT NULL,
    database_name    text NOT NULL,
    -- creating: the slot may or may not exist yet; snapshot: the initial load is running;
    -- streaming: the slot is the source of truth and must not disappear.
    status           text NOT NULL CHECK (status IN ('creating', 'snapshot', 'streaming')),
    -- Where the slot started (its exported snapshot's position).
    consistent_point pg_lsn,
    -- Raised before every confirmation, so the slot's confirmed_flush_lsn never passes it; a
    -- slot found beyond it was recreated or advanced by someone else.
    position_limit   pg_lsn,
    -- Rows of the initial snapshot acknowledged by the broker so far.
    snapshot_rows    bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
)
