-- Unpublished rows, and the envelope time of the oldest (the outbox keeps no write time).
SELECT count(*),
       (SELECT CAST(payload AS TEXT) ->> '$.time' FROM outbox ORDER BY id LIMIT 1)
FROM outbox
