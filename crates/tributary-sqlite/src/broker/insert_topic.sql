INSERT INTO topics (name, partitions) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING
