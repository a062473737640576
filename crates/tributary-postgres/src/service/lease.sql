-- A session-level advisory lock: held until unlocked or the session ends (the holder died).
SELECT pg_try_advisory_lock(hashtextextended($1, 0))
