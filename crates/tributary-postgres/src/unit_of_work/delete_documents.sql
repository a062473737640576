-- Every delete of the unit in one statement (the documents are locked and checked already).
DELETE FROM __SCHEMA__.documents
WHERE (collection, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
