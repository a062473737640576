UPDATE __SCHEMA__.dead_letters
SET attempts = attempts + 1, reason = $2, last_failed_at = clock_timestamp()
WHERE id = $1 AND resolution IS NULL
