-- Inbox entries recorded since $1, per consumer group: a range of the inbox's time index.
SELECT consumer_group, count(*) FROM __SCHEMA__.inbox
WHERE processed_at >= $1
GROUP BY consumer_group
ORDER BY consumer_group
