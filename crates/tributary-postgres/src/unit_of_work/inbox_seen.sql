-- One index probe per id (the LATERAL ... LIMIT 1 cannot be turned into a join): a plain
-- `message_id = ANY($2)` may be planned as a scan of the group's whole inbox, filtered.
SELECT m.id FROM unnest($2::uuid[]) AS m(id),
LATERAL (SELECT 1 FROM __SCHEMA__.inbox
         WHERE consumer_group = $1 AND message_id = m.id
         LIMIT 1) AS seen
