UPDATE dead_letters SET resolution = ?2, resolved_at = ?3
WHERE id = ?1 AND resolution IS NULL
