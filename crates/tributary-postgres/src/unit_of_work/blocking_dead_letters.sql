-- The oldest unresolved dead letter of each key, one index probe per key (as
-- blocking_dead_letter.sql does for one key).
SELECT k.key, d.id FROM unnest($2::text[]) AS k(key),
LATERAL (SELECT id FROM __SCHEMA__.dead_letters
         WHERE consumer_group = $1 AND message_key = k.key AND resolution IS NULL
         ORDER BY id
         LIMIT 1) AS d
