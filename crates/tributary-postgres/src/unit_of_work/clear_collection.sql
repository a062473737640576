DELETE FROM __SCHEMA__.documents WHERE collection = $1
