#!/usr/bin/env bash
# End-to-end benchmark: seeds ROWS messy rows with ten customer fields, starts the sandbox
# (full validation), runs `capi-sync sync` under /usr/bin/time -v, times a raw COPY of the
# same query, and prints rows, seconds, events/s, peak RSS and the ratio to COPY. Then the
# Meta-like latency scenario (sandbox --slow-ms 300) with 1, 4 and 16 requests in flight.
# The throughput run keeps THROUGHPUT_CONCURRENCY requests in flight (default 8: with the
# sandbox and Postgres on the same two cores, four leave the cores idle while every batch
# waits on one of them).
#
#   bench/e2e.sh [ROWS] [LATENCY_ROWS]      (defaults: 1000000 and 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
LAT_ROWS=${2:-200000}
THROUGHPUT_CONCURRENCY=${THROUGHPUT_CONCURRENCY:-8}
PG=${CAPI_SYNC_BENCH_PG:-postgres://postgres@127.0.0.1:5432}
DB=capi_sync_bench
OUT=bench/out
mkdir -p "$OUT"
PORT=${CAPI_SYNC_BENCH_PORT:-18089}
TOKEN=bench-token

cargo build --release --quiet
BIN=target/release/capi-sync

psql "$PG/postgres" -qtAc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
psql "$PG/postgres" -qtAc "CREATE DATABASE $DB" >/dev/null
echo "seeding $ROWS rows..."
psql "$PG/$DB" -q <<SQL
CREATE SCHEMA bench;
CREATE TABLE bench.conversions (
  id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, happened_at timestamptz NOT NULL,
  stage text, email text, phone text, first_name text, last_name text, city text, state text,
  zip text, country text, birthday date, customer_id text, amount numeric(12,2));
INSERT INTO bench.conversions
SELECT g,
  now() - interval '2 hours' + (g / 50) * interval '1 millisecond',
  now() - interval '3 hours',
  (ARRAY['Lead','Qualified','Opportunity','Closed Won'])[1 + g % 4],
  (ARRAY['  John.Smith','MARY_jane','josé.garcía','Zoe.Q','priya'])[1 + g % 5] || g || '@' ||
    (ARRAY['Gmail.com','Example.COM ','mail.co.uk'])[1 + g % 3],
  (ARRAY['+1 (650) 253-','650.253.','(415) 253 ','+44 20 7946 ','212-253-'])[1 + g % 5] || lpad((g % 10000)::text, 4, '0'),
  (ARRAY[' John','Mary-Jane','José','ZOË','Priya'])[1 + g % 5],
  (ARRAY['Smith',' O''Neil','García','Müller','van der Berg'])[1 + g % 5],
  (ARRAY['San Francisco','New York','St. Louis','São Paulo','Winston-Salem'])[1 + g % 5],
  (ARRAY['California','CA','N.Y.','new york','Texas'])[1 + g % 5],
  (ARRAY['94105-1234','10001',' 02134','73301','941051234'])[1 + g % 5],
  (ARRAY['US','United States','usa','us','U.S.A.'])[1 + g % 5],
  date '1950-01-01' + (g % 18000),
  'CUST-' || g,
  (g % 50000) / 100.0
FROM generate_series(1, $ROWS) g;
CREATE INDEX ON bench.conversions (updated_at, id);
ANALYZE bench.conversions;
SQL
# Settle the fresh table first (hint bits, visibility map, a checkpoint) so autovacuum and
# the checkpointer do not run during the timed part.
psql "$PG/$DB" -qc "VACUUM (ANALYZE) bench.conversions" -c "CHECKPOINT" >/dev/null

MODEL_SQL="SELECT id, updated_at, stage AS event_name, happened_at AS event_time, email AS em, phone AS ph, first_name AS fn, last_name AS ln, city AS ct, state AS st, zip AS zp, country, birthday AS db, customer_id AS external_id, amount AS value FROM bench.conversions"

write_config() { # $1 concurrency, $2 file
  cat > "$2" <<TOML
[warehouse]
url = "$PG/$DB"
statement_timeout = "300s"
[meta]
graph_url = "http://127.0.0.1:$PORT"
access_token = "$TOKEN"
concurrency = $1
request_timeout = "60s"
[service]
run_deadline = "2h"
[[models]]
name = "bench"
pixel_id = "123456789012345"
schedule = "0 * * * *"
sql = "$MODEL_SQL"
primary_key = "id"
cursor = "updated_at"
default_country = "us"
[models.constants]
action_source = "system_generated"
"custom_data.currency" = "USD"
TOML
}

start_sandbox() { # extra args
  $BIN sandbox --port "$PORT" --token "$TOKEN" "$@" >"$OUT/sandbox.log" 2>&1 &
  SANDBOX_PID=$!
  for _ in $(seq 1 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return; sleep 0.1; done
  echo "sandbox did not start"; exit 1
}
stop_sandbox() { kill "$SANDBOX_PID" 2>/dev/null || true; wait "$SANDBOX_PID" 2>/dev/null || true; }
trap stop_sandbox EXIT

reset_state() { psql "$PG/$DB" -qtAc "SET client_min_messages = warning; DROP SCHEMA IF EXISTS capi_sync CASCADE" >/dev/null; }

echo "timing COPY of the model's query (median of three)..."
COPY_TIMES=()
for _ in 1 2 3; do
  COPY_START=$(date +%s.%N)
  psql "$PG/$DB" -qtAc "COPY ($MODEL_SQL) TO STDOUT" > /dev/null
  COPY_END=$(date +%s.%N)
  COPY_TIMES+=("$(echo "$COPY_END - $COPY_START" | bc -l)")
done
COPY_S=$(printf '%s\n' "${COPY_TIMES[@]}" | sort -n | sed -n 2p)

# CPU-seconds used by the whole machine, and by one process.
machine_cpu() { awk '/^cpu /{print ($2+$3+$4+$7+$8)/100}' /proc/stat; }
process_cpu() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }

run_sync() { # $1 label, $2 concurrency, $3 expected rows
  write_config "$2" "$OUT/bench.toml"
  reset_state
  local cpu0 sb0
  cpu0=$(machine_cpu); sb0=$(process_cpu "$SANDBOX_PID")
  /usr/bin/time -v $BIN --config "$OUT/bench.toml" sync bench >"$OUT/sync-$1.out" 2>"$OUT/sync-$1.err"
  local all sandbox ours
  all=$(echo "$(machine_cpu) - $cpu0" | bc -l)
  sandbox=$(echo "$(process_cpu "$SANDBOX_PID") - $sb0" | bc -l)
  ours=$(awk '/User time|System time/ {s += $NF} END {print s}' "$OUT/sync-$1.err")
  local secs rss
  secs=$(grep "Elapsed (wall clock)" "$OUT/sync-$1.err" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(grep "Maximum resident set size" "$OUT/sync-$1.err" | awk '{print $NF}')
  local sent
  sent=$(grep -o '[0-9]* events sent' "$OUT/sync-$1.out" | head -1 | awk '{print $1}')
  printf "%-22s rows=%-8s sent=%-8s seconds=%-7.2f events/s=%-9.0f peak_rss=%.1fMiB" \
    "$1" "$3" "$sent" "$secs" "$(echo "$sent / $secs" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
  if [ "$1" = "throughput" ]; then printf " copy=%.2fs ratio=%.2fx" "$COPY_S" "$(echo "$secs / $COPY_S" | bc -l)"; fi
  echo
  # Where the machine's CPU went during the run (Postgres includes the model's query and
  # every state write; "other" is whatever else ran).
  printf "%-22s cpu-seconds: capi-sync=%.2f postgres+other=%.2f sandbox=%.2f (of %.2f available)\n" \
    "" "$ours" "$(echo "$all - $ours - $sandbox" | bc -l)" "$sandbox" "$(echo "$secs * $(nproc)" | bc -l)"
}

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
start_sandbox
echo "throughput run: meta.concurrency = $THROUGHPUT_CONCURRENCY"
run_sync throughput "$THROUGHPUT_CONCURRENCY" "$ROWS"
stop_sandbox

if [ "$LAT_ROWS" -gt 0 ]; then
  psql "$PG/$DB" -qtAc "DELETE FROM bench.conversions WHERE id > $LAT_ROWS" >/dev/null
  start_sandbox --slow-ms 300
  for c in 16 4 1; do
    rows=$LAT_ROWS
    [ "$c" = 1 ] && { psql "$PG/$DB" -qtAc "DELETE FROM bench.conversions WHERE id > 20000" >/dev/null; rows=20000; }
    run_sync "latency300ms-inflight$c" "$c" "$rows"
  done
  stop_sandbox
fi
