SELECT body::text FROM __SCHEMA__.documents WHERE collection = $1 AND id = $2
