-- No lock: the unit checks at commit that the version it read is still the stored one.
SELECT body::text, version FROM __SCHEMA__.documents WHERE collection = $1 AND id = $2
