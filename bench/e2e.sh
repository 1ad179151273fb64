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
#
# With --defaults, the config is the default one (only the database, the sandbox and the
# model are set) and the rows are messier: phones in four formats with and without the
# country code, ten rows sharing each cursor value, and 2% of the rows refused (1% with an
# event time over 7 days old, 1% left with only location fields, a set Meta rejects as too
# broad). Each ROWS count is seeded and run in turn, and the per-row cost of each is compared
# with the first's:
#
#   bench/e2e.sh --defaults [ROWS...]       (default: 1000000)
#
# COUNT_ONLY=1 runs the sandbox with --count-only, an endpoint that counts each request's
# events without validating them (as a local endpoint that only counts events would): the
# run then measures capi-sync and Postgres with next to nothing spent on Meta's side.
#
# With --series, the same rows and default config against a sandbox answering after 300 ms
# (like Meta's Graph API); it prints the events acknowledged each second of the run, and the
# requests the run allowed itself in flight every 5 s (from its progress lines):
#
#   bench/e2e.sh --series [ROWS]            (default: 300000)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=classic
case "${1:-}" in
  --defaults) MODE=defaults; shift ;;
  --series) MODE=series; shift ;;
esac
ROWS=${1:-1000000}
[ "$MODE" = series ] && ROWS=${1:-300000}
LAT_ROWS=${2:-200000}
THROUGHPUT_CONCURRENCY=${THROUGHPUT_CONCURRENCY:-8}
PG=${CAPI_SYNC_BENCH_PG:-postgres://postgres@127.0.0.1:5432}
DB=${CAPI_SYNC_BENCH_DB:-capi_sync_bench}
OUT=bench/out
mkdir -p "$OUT"
PORT=${CAPI_SYNC_BENCH_PORT:-18089}
TOKEN=bench-token
# capi-sync reads every CAPI_SYNC_* variable as config, and refuses unknown keys.
BIN=${CAPI_SYNC_BENCH_BIN:-}
unset CAPI_SYNC_BENCH_PG CAPI_SYNC_BENCH_DB CAPI_SYNC_BENCH_PORT CAPI_SYNC_BENCH_BIN

if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN=target/release/capi-sync
fi

create_db() {
  psql "$PG/postgres" -qtAc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
  psql "$PG/postgres" -qtAc "CREATE DATABASE $DB" >/dev/null
  psql "$PG/$DB" -qc "CREATE SCHEMA bench" -c "CREATE TABLE bench.conversions (
    id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, happened_at timestamptz NOT NULL,
    stage text, email text, phone text, first_name text, last_name text, city text, state text,
    zip text, country text, birthday date, customer_id text, amount numeric(12,2))" >/dev/null
}

# Settle the fresh table first (hint bits, visibility map, a checkpoint) so autovacuum and
# the checkpointer do not run during the timed part.
settle_table() {
  psql "$PG/$DB" -qc "CREATE INDEX ON bench.conversions (updated_at, id)" >/dev/null
  psql "$PG/$DB" -qc "VACUUM (ANALYZE) bench.conversions" -c "CHECKPOINT" >/dev/null
}

seed_classic() { # $1 rows
  echo "seeding $1 rows..."
  create_db
  psql "$PG/$DB" -q <<SQL
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
FROM generate_series(1, $1) g;
SQL
  settle_table
}

# The messier rows of --defaults and --series. Ten rows share each updated_at. Phones come in
# four formats (parentheses, dots, dashes, spaces), each with and without "+1". Of every 100
# rows, one happened 8 days ago (refused: event_time_too_old) and one keeps only its city,
# state, ZIP and country (refused: customer_information_too_broad).
seed_messy() { # $1 rows
  if [ -n "${REUSE_ROWS:-}" ] && [ "$(psql "$PG/$DB" -qtAc "SELECT count(*) FROM bench.conversions" 2>/dev/null)" = "$1" ]; then
    echo "reusing the $1 messy rows seeded before (REUSE_ROWS)"
    return
  fi
  echo "seeding $1 messy rows..."
  create_db
  psql "$PG/$DB" -q <<SQL
INSERT INTO bench.conversions
SELECT g,
  now() - interval '2 hours' + ((g - 1) / 10) * interval '1 millisecond',
  CASE WHEN g % 100 = 7 THEN now() - interval '8 days' ELSE now() - interval '3 hours' END,
  (ARRAY['Lead','Qualified','Opportunity','Closed Won'])[1 + g % 4],
  CASE WHEN g % 100 <> 42 THEN
    (ARRAY['  John.Smith','MARY_jane','josé.garcía','Zoe.Q','priya'])[1 + g % 5] || g || '@' ||
    (ARRAY['Gmail.com','Example.COM ','mail.co.uk'])[1 + g % 3] END,
  CASE WHEN g % 100 <> 42 THEN
    (ARRAY['+1 (650) 253-','(650) 253-','+1 650.253.','650.253.','+1 212-253-','212-253-','+1 415 253 ','415 253 '])[1 + g % 8]
    || lpad((g % 10000)::text, 4, '0') END,
  CASE WHEN g % 100 <> 42 THEN (ARRAY[' John','Mary-Jane','José','ZOË','Priya'])[1 + g % 5] END,
  CASE WHEN g % 100 <> 42 THEN (ARRAY['Smith',' O''Neil','García','Müller','van der Berg'])[1 + g % 5] END,
  (ARRAY['San Francisco','New York','St. Louis','São Paulo','Winston-Salem'])[1 + g % 5],
  (ARRAY['California','CA','N.Y.','new york','Texas'])[1 + g % 5],
  (ARRAY['94105-1234','10001',' 02134','73301','941051234'])[1 + g % 5],
  (ARRAY['US','United States','usa','us','U.S.A.'])[1 + g % 5],
  CASE WHEN g % 100 <> 42 THEN date '1950-01-01' + (g % 18000) END,
  CASE WHEN g % 100 <> 42 THEN 'CUST-' || g END,
  (g % 50000) / 100.0
FROM generate_series(1, $1) g;
SQL
  settle_table
}

MODEL_SQL="SELECT id, updated_at, stage AS event_name, happened_at AS event_time, email AS em, phone AS ph, first_name AS fn, last_name AS ln, city AS ct, state AS st, zip AS zp, country, birthday AS db, customer_id AS external_id, amount AS value FROM bench.conversions"

write_config() { # $1 concurrency ("" for the default config), $2 file
  local tuning=""
  if [ -n "$1" ]; then
    tuning=$'concurrency = '"$1"$'\nrequest_timeout = "60s"'
  fi
  cat > "$2" <<TOML
[warehouse]
url = "$PG/$DB"
$([ -n "$1" ] && echo 'statement_timeout = "300s"')
[meta]
graph_url = "http://127.0.0.1:$PORT"
access_token = "$TOKEN"
$tuning
$([ -n "$1" ] && printf '[service]\nrun_deadline = "2h"')
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
  $BIN sandbox --port "$PORT" --token "$TOKEN" ${COUNT_ONLY:+--count-only} "$@" >"$OUT/sandbox.log" 2>&1 &
  SANDBOX_PID=$!
  for _ in $(seq 1 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return; sleep 0.1; done
  echo "sandbox did not start"; exit 1
}
SANDBOX_PID=
stop_sandbox() { [ -n "$SANDBOX_PID" ] || return 0; kill "$SANDBOX_PID" 2>/dev/null || true; wait "$SANDBOX_PID" 2>/dev/null || true; SANDBOX_PID=; }
trap stop_sandbox EXIT

reset_state() { psql "$PG/$DB" -qtAc "SET client_min_messages = warning; DROP SCHEMA IF EXISTS capi_sync CASCADE" >/dev/null; }

time_copy() {
  echo "timing COPY of the model's query (median of three)..."
  local times=() t0 t1
  for _ in 1 2 3; do
    t0=$(date +%s.%N)
    psql "$PG/$DB" -qtAc "COPY ($MODEL_SQL) TO STDOUT" > /dev/null
    t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  COPY_S=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 2p)
}

# CPU-seconds used by the whole machine, and by one process.
machine_cpu() { awk '/^cpu /{print ($2+$3+$4+$7+$8)/100}' /proc/stat; }
process_cpu() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
# CPU-seconds of the Postgres server alone: its live processes, and the backends that have
# ended (the postmaster's reaped children). Blank when the server runs as another user or
# elsewhere.
postgres_cpu() {
  local master
  master=$(pgrep -u postgres -f 'bin/postgres' | head -1)
  [ -n "$master" ] || return 0
  { awk '{print ($16+$17)/100}' "/proc/$master/stat"
    for p in $(pgrep -u postgres); do awk '{print ($14+$15)/100}' "/proc/$p/stat" 2>/dev/null; done
  } | awk '{s += $1} END {printf "%.2f", s}'
}

run_sync() { # $1 label, $2 concurrency ("" for the default config), $3 expected rows
  write_config "$2" "$OUT/bench.toml"
  reset_state
  local cpu0 sb0 pg0
  cpu0=$(machine_cpu); sb0=$(process_cpu "$SANDBOX_PID"); pg0=$(postgres_cpu)
  /usr/bin/time -v $BIN --config "$OUT/bench.toml" sync bench >"$OUT/sync-$1.out" 2>"$OUT/sync-$1.err" ||
    { echo "$1: sync failed:"; head -3 "$OUT/sync-$1.err"; exit 1; }
  local all sandbox ours pg
  all=$(echo "$(machine_cpu) - $cpu0" | bc -l)
  pg=$(postgres_cpu)
  [ -n "$pg0" ] && [ -n "$pg" ] && pg=$(echo "$pg - $pg0" | bc -l)
  sandbox=$(echo "$(process_cpu "$SANDBOX_PID") - $sb0" | bc -l)
  ours=$(awk '/User time|System time/ {s += $NF} END {print s}' "$OUT/sync-$1.err")
  local rss
  SECS=$(grep "Elapsed (wall clock)" "$OUT/sync-$1.err" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(grep "Maximum resident set size" "$OUT/sync-$1.err" | awk '{print $NF}')
  local sent refused
  sent=$(grep -o '[0-9]* events sent' "$OUT/sync-$1.out" | head -1 | awk '{print $1}')
  refused=$(grep -o '[0-9]* refused,' "$OUT/sync-$1.out" | head -1 | awk '{print $1}')
  printf "%-22s rows=%-8s sent=%-8s refused=%-6s seconds=%-7.2f events/s=%-9.0f peak_rss=%.1fMiB" \
    "$1" "$3" "$sent" "${refused:-0}" "$SECS" "$(echo "$sent / $SECS" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
  if [ "${4:-}" = copy ]; then
    printf " copy=%.2fs ratio=%.2fx per_row=%.2fus" "$COPY_S" "$(echo "$SECS / $COPY_S" | bc -l)" "$(echo "$SECS * 1000000 / $3" | bc -l)"
  fi
  echo
  # Where the machine's CPU went during the run (Postgres includes the model's query and
  # every state write; "other" is whatever else ran).
  printf "%-22s cpu-seconds: capi-sync=%.2f postgres+other=%.2f sandbox=%.2f (of %.2f available)" \
    "" "$ours" "$(echo "$all - $ours - $sandbox" | bc -l)" "$sandbox" "$(echo "$SECS * $(nproc)" | bc -l)"
  if [ -n "$pg" ]; then
    printf "; postgres alone=%.2f (%.2f us per row)" "$pg" "$(echo "$pg * 1000000 / $3" | bc -l)"
  fi
  echo
}

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

case $MODE in
classic)
  seed_classic "$ROWS"
  time_copy
  start_sandbox
  echo "throughput run: meta.concurrency = $THROUGHPUT_CONCURRENCY"
  run_sync throughput "$THROUGHPUT_CONCURRENCY" "$ROWS" copy
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
  ;;
defaults)
  FIRST_PER_ROW=
  for rows in "${@:-1000000}"; do
    seed_messy "$rows"
    time_copy
    start_sandbox
    echo "default config, $rows messy rows${COUNT_ONLY:+, sandbox counting events only}"
    run_sync "defaults-$rows" "" "$rows" copy
    stop_sandbox
    per_row=$(echo "$SECS / $rows" | bc -l)
    if [ -z "$FIRST_PER_ROW" ]; then FIRST_PER_ROW=$per_row; else
      printf "%-22s per-row cost vs the first run: %.3f\n" "" "$(echo "$per_row / $FIRST_PER_ROW" | bc -l)"
    fi
  done
  ;;
series)
  seed_messy "$ROWS"
  start_sandbox --slow-ms 300
  write_config "" "$OUT/bench.toml"
  reset_state
  echo "default config, $ROWS messy rows, sandbox answering after 300 ms"
  # The ledger holds every acknowledged event (written within a batch or two of the answer).
  acked() { psql "$PG/$DB" -qtAc "SELECT count(*) FROM capi_sync.deliveries" 2>/dev/null || echo 0; }
  /usr/bin/time -v $BIN --config "$OUT/bench.toml" sync bench >"$OUT/series.out" 2>"$OUT/series.err" &
  SYNC_PID=$!
  t0=$(date +%s.%N); prev=0; second=0
  while kill -0 "$SYNC_PID" 2>/dev/null; do
    second=$((second + 1))
    sleep "$(echo "$t0 + $second - $(date +%s.%N)" | bc -l | awk '{print ($1 > 0 ? $1 : 0)}')"
    now=$(acked); now=${now:-0}
    printf "t=%3ss acknowledged=%-8s events/s=%s\n" "$second" "$now" "$((now - prev))"
    prev=$now
  done
  wait "$SYNC_PID" || true
  stop_sandbox
  echo "progress lines (every 5 s):"
  sed 's/\x1b\[[0-9;]*m//g' "$OUT/series.err" | grep -o 'events_sent=[0-9]*.*in_flight_limit=[0-9]*' | sed 's/^/  /' || true
  grep -o '[0-9]* events sent.*' "$OUT/series.out" | head -1
  echo "peak RSS: $(awk '/Maximum resident set size/ {printf "%.1f MiB", $NF / 1024}' "$OUT/series.err")"
  ;;
esac
