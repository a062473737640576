-- Every event-store relay cursor of the schema (names are `events:<source name>`).
SELECT name FROM __SCHEMA__.relay_cursors ORDER BY name
