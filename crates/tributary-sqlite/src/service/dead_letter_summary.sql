SELECT consumer_group, count(*), count(parked_behind), count(DISTINCT message_key),
       min(first_failed_at)
FROM dead_letters
WHERE resolution IS NULL
GROUP BY consumer_group
ORDER BY consumer_group
