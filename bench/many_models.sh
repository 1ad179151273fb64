#!/usr/bin/env bash
# Many models in one service. For each model count, seeds ROWS_PER_MODEL rows per model in one
# table (model k reads the slice `slice = k`), starts the sandbox, and runs `capi-sync run` with
# every model due once a minute (the first fire time 20 s after the start) for DURATION seconds
# under /usr/bin/time -v, adding ROWS_PER_MODEL more rows per model after the first minute. It
# prints, per model count: peak RSS, the peak of capi-sync's Postgres sessions (sampled every
# 200 ms with one `psql \watch`) against the budget warehouse.max_connections +
# state.max_connections + 1 (the one session holding every model lock), runs and failed runs,
# the start delay of the runs (median, 95th percentile, max: started_at - scheduled_for in the
# runs table), the peak of capi_sync_runs_waiting, and events sent against rows in the table.
#
#   bench/many_models.sh [MODEL_COUNTS...]      (default: 50 200 1000)
#
# Environment: ROWS_PER_MODEL (default 1000), DURATION seconds (default 150: three fire times),
# MAX_CONCURRENT_RUNS (default 4), PROFILE (release or debug; default release),
# CAPI_SYNC_BENCH_PG (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=("$@")
[ ${#COUNTS[@]} -eq 0 ] && COUNTS=(50 200 1000)
ROWS_PER_MODEL=${ROWS_PER_MODEL:-1000}
DURATION=${DURATION:-150}
MAX_CONCURRENT_RUNS=${MAX_CONCURRENT_RUNS:-4}
PROFILE=${PROFILE:-release}
export PGOPTIONS="-c client_min_messages=warning"
PG=${CAPI_SYNC_BENCH_PG:-postgres://postgres@127.0.0.1:5432}
DB=capi_sync_bench_many
OUT=bench/out
mkdir -p "$OUT"
PORT=${CAPI_SYNC_BENCH_PORT:-18091}
METRICS_PORT=${CAPI_SYNC_BENCH_METRICS_PORT:-18092}
TOKEN=bench-token
WAREHOUSE_CONNECTIONS=4
STATE_POOL=6

if [ "$PROFILE" = release ]; then
  cargo build --release --quiet
else
  cargo build --quiet
fi
BIN=target/$PROFILE/capi-sync

SANDBOX_PID=""
WATCH_PID=""
cleanup() {
  [ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null || true
  [ -n "$SANDBOX_PID" ] && kill "$SANDBOX_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

seed() { # $1 models, $2 first id
  psql "$PG/$DB" -qtAc "INSERT INTO bench.leads
    SELECT g, g % $1, now(), now() - interval '1 hour', 'Lead', 'person.' || g || '@example.com'
    FROM generate_series($2, $2 + $1 * $ROWS_PER_MODEL - 1) AS g" >/dev/null
}

write_config() { # $1 models, $2 file, $3 second of the minute the models fire at
  {
    cat <<TOML
[warehouse]
url = "$PG/$DB"
max_connections = $WAREHOUSE_CONNECTIONS
[meta]
graph_url = "http://127.0.0.1:$PORT"
access_token = "$TOKEN"
[service]
metrics_addr = "127.0.0.1:$METRICS_PORT"
max_concurrent_runs = $MAX_CONCURRENT_RUNS
TOML
    for k in $(seq 0 $(($1 - 1))); do
      cat <<TOML
[[models]]
name = "m$k"
pixel_id = "123456789012345"
schedule = "$3 * * * * *"
sql = "SELECT id, updated_at, stage AS event_name, happened_at AS event_time, email AS em FROM bench.leads WHERE slice = $k"
primary_key = "id"
cursor = "updated_at"
[models.constants]
action_source = "system_generated"
TOML
    done
  } > "$2"
}

run_models() { # $1 models
  local n=$1
  psql "$PG/postgres" -qtAc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
  psql "$PG/postgres" -qtAc "CREATE DATABASE $DB" >/dev/null
  psql "$PG/$DB" -qc "CREATE SCHEMA bench" -c "CREATE TABLE bench.leads (id bigint PRIMARY KEY,
      slice int NOT NULL, updated_at timestamptz NOT NULL, happened_at timestamptz NOT NULL,
      stage text, email text)" -c "CREATE INDEX ON bench.leads (slice, updated_at, id)" >/dev/null
  seed "$n" 1

  $BIN sandbox --port "$PORT" --token "$TOKEN" >"$OUT/many-sandbox.log" 2>&1 &
  SANDBOX_PID=$!
  for _ in $(seq 1 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

  local second=$(( ($(date +%s) + 20) % 60 ))
  write_config "$n" "$OUT/many.toml" "$second"
  local sessions="$OUT/many-sessions-$n.txt"
  printf "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'capi-sync' AND datname = '%s'\n\\\\watch 0.2\n" "$DB" \
    | psql "$PG/postgres" -qtA > "$sessions" 2>/dev/null &
  WATCH_PID=$!

  /usr/bin/time -v "$BIN" --config "$OUT/many.toml" run >"$OUT/many-$n.out" 2>"$OUT/many-$n.err" &
  local time_pid=$!
  local started
  started=$(date +%s)
  local waiting_peak=0 added=0
  while [ $(( $(date +%s) - started )) -lt "$DURATION" ]; do
    sleep 1
    local w
    w=$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '/^capi_sync_runs_waiting /{print int($2)}')
    [ -n "$w" ] && [ "$w" -gt "$waiting_peak" ] && waiting_peak=$w
    # Rows arrive after the first minute's runs.
    if [ "$added" = 0 ] && [ $(( $(date +%s) - started )) -ge 50 ]; then
      seed "$n" $(( n * ROWS_PER_MODEL + 1 ))
      added=1
    fi
  done
  local service_pid
  service_pid=$(ps -o pid= --ppid "$time_pid" | tr -d ' ')
  kill -TERM "$service_pid"
  wait "$time_pid" || true
  kill "$WATCH_PID" 2>/dev/null || true; wait "$WATCH_PID" 2>/dev/null || true; WATCH_PID=""
  kill "$SANDBOX_PID" 2>/dev/null || true; wait "$SANDBOX_PID" 2>/dev/null || true; SANDBOX_PID=""

  local rss peak_sessions budget
  rss=$(awk '/Maximum resident set size/ {print $NF}' "$OUT/many-$n.err")
  peak_sessions=$(grep -E '^[0-9]+$' "$sessions" | sort -n | tail -1)
  budget=$(( WAREHOUSE_CONNECTIONS + STATE_POOL + 1 ))
  local stats
  stats=$(psql "$PG/$DB" -qtA -F ' ' -c "
    SELECT count(*), count(*) FILTER (WHERE status = 'failed'), count(DISTINCT model),
           round(coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY d), 0)::numeric, 2),
           round(coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY d), 0)::numeric, 2),
           round(coalesce(max(d), 0)::numeric, 2), coalesce(sum(events_sent), 0),
           (SELECT count(*) FROM bench.leads)
    FROM (SELECT *, extract(epoch FROM started_at - scheduled_for) AS d FROM capi_sync.runs) AS r")
  read -r runs failed models_ran p50 p95 max sent rows <<<"$stats"
  printf "models=%-5s peak_rss=%6.1fMiB peak_sessions=%s/%s runs=%s failed=%s models_ran=%s start_delay_s(p50/p95/max)=%s/%s/%s runs_waiting_peak=%s events_sent=%s rows=%s\n" \
    "$n" "$(echo "$rss / 1024" | bc -l)" "${peak_sessions:-0}" "$budget" "$runs" "$failed" "$models_ran" \
    "$p50" "$p95" "$max" "$waiting_peak" "$sent" "$rows"
}

echo "machine: $(nproc) cores; $PROFILE build; $ROWS_PER_MODEL rows per model (twice); ${DURATION}s per count; max_concurrent_runs=$MAX_CONCURRENT_RUNS"
for n in "${COUNTS[@]}"; do
  run_models "$n"
done
psql "$PG/postgres" -qtAc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
