-- Inbox entries recorded since ?1 (milliseconds), per group: a range of the time index.
SELECT consumer_group, count(*) FROM inbox
WHERE processed_at >= ?1
GROUP BY consumer_group
ORDER BY consumer_group
