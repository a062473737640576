DELETE FROM documents WHERE collection = ?1
