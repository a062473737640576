-- The position of the (?2 + 1)-th event at or after ?1: where to split a large read.
SELECT position FROM events WHERE position >= ?1 ORDER BY position LIMIT 1 OFFSET ?2
