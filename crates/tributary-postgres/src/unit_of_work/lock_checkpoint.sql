SELECT position FROM __SCHEMA__.checkpoints WHERE name = $1 FOR UPDATE
