-- Events after a relay cursor, and the time of the first of them. ?1: the cursor's name.
WITH c AS (SELECT coalesce((SELECT position FROM relay_cursors WHERE name = ?1), 0) AS at)
SELECT (SELECT count(*) FROM events, c WHERE position > c.at),
       (SELECT time_ns FROM events, c WHERE position > c.at ORDER BY position LIMIT 1)
