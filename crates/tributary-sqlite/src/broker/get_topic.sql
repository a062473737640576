SELECT partitions FROM topics WHERE name = ?1
