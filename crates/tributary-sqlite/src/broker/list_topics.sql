SELECT name, partitions FROM topics ORDER BY name
