SELECT id, body FROM documents
WHERE collection = ?1 AND id > ?2
ORDER BY id
LIMIT ?3
