UPDATE dead_letters SET attempts = attempts + 1, reason = ?2, last_failed_at = ?3
WHERE id = ?1 AND resolution IS NULL
