UPDATE __SCHEMA__.dead_letters SET resolution = $2, resolved_at = clock_timestamp()
WHERE id = $1 AND resolution IS NULL
