SELECT name FROM relay_cursors ORDER BY name
