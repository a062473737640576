SELECT position FROM relay_cursors WHERE name = ?1
