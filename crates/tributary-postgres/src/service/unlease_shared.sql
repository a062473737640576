SELECT pg_advisory_unlock_shared(hashtextextended($1, 0))
