#!/usr/bin/env bash
# A service written without Tributary: a shell script that keeps orders in MariaDB and, in the
# same transaction as each order, writes its event into an outbox table (the layout documented
# in tributary-cdc's `binlog` module). Only the `mariadb` client is used.
#
# Usage: orders_service.sh HOST PORT USER DATABASE ORDERS
# Prints nothing; exits non-zero if MariaDB refuses anything.
set -euo pipefail
host=$1 port=$2 user=$3 db=$4 orders=$5
declare -A seq
{
  echo "CREATE TABLE IF NOT EXISTS orders (id INT PRIMARY KEY, customer VARCHAR(20) NOT NULL,
          seq INT NOT NULL, total DECIMAL(10,2) NOT NULL, placed_at DATETIME(3) NOT NULL) ENGINE=InnoDB;"
  echo "CREATE TABLE IF NOT EXISTS outbox (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
          event_id CHAR(36) NOT NULL, topic VARCHAR(255) NOT NULL, message_key VARCHAR(255) NOT NULL,
          payload LONGTEXT NOT NULL) ENGINE=InnoDB;"
  for ((i = 1; i <= orders; i++)); do
    customer="c$((RANDOM % 10))"
    seq[$customer]=$(( ${seq[$customer]:-0} + 1 ))
    n=${seq[$customer]}
    event_id=$(cat /proc/sys/kernel/random/uuid)
    echo "BEGIN;"
    echo "INSERT INTO orders VALUES ($i, '$customer', $n, $((RANDOM % 1000)).25, NOW(3));"
    echo "INSERT INTO outbox (event_id, topic, message_key, payload) VALUES ('$event_id', 'OrderPlaced', '$customer',
            JSON_OBJECT('specversion', '1.0', 'id', '$event_id', 'source', 'orders-sh', 'type', 'OrderPlaced',
                        'subject', '$customer', 'time', DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%fZ'),
                        'datacontenttype', 'application/json', 'partitionkey', '$customer',
                        'data', JSON_OBJECT('order', $i, 'seq', $n)));"
    # Now and then a change of an existing order, and a rollback that must never be published.
    if (( i % 7 == 0 )); then
      echo "UPDATE orders SET total = total + 1 WHERE id = $i;"
    fi
    echo "COMMIT;"
    if (( i % 11 == 0 )); then
      echo "BEGIN; INSERT INTO orders VALUES ($((i + 1000000)), 'ghost', 0, 0, NOW(3)); ROLLBACK;"
    fi
  done
} | mariadb -N -B -h "$host" -P "$port" -u "$user" "$db"
