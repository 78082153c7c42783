#!/usr/bin/env bash
# consent-drop against its peers, on the same generated proof files.
#
#   scripts/peer-bench.sh [ROWS...]        (default: 1000000 5000000)
#
# For each size, one file from `consent-drop sample`, then:
#   consent-drop import -> file sink   (validation pass + NDJSON + fsync)
#   mlr --icsv --ifs ';' --allow-ragged-csv-input --ojsonl cat
#                                      (Miller: CSV to JSON lines, no validation;
#                                       ragged: rows may omit the 5th column)
#   wc -l                              (the read limit)
#   consent-drop import -> test API    (target/release/examples/test_server on
#                                       loopback, concurrency 1, 4 and 8)
# and prints rows/s, MB/s and peak RSS (GNU time's %M) for each.
#
# Installs GNU time (package `time`) and Miller (package `miller`) with
# apt-get when they are missing. PEER_BENCH_HTTP_MAX_ROWS (default 2000000)
# skips the API runs above that size: the test server keeps every event in
# memory (about 2 GB a million).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/bin/time ] || need_apt+=(time)
command -v mlr > /dev/null || need_apt+=(miller)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "installing ${need_apt[*]} (apt-get)" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq > /dev/null
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need_apt[@]}" > /dev/null
fi
command -v mlr > /dev/null || { echo "Miller (mlr) is missing and could not be installed" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "GNU time is missing and could not be installed" >&2; exit 2; }

cargo build --release --quiet --bin consent-drop --example test_server
bin="$PWD/target/release/consent-drop"
server_bin="$PWD/target/release/examples/test_server"
http_max_rows="${PEER_BENCH_HTTP_MAX_ROWS:-2000000}"

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2> /dev/null || true; wait "$server_pid" 2> /dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

imports() {
  cat <<TOML
[[import]]
name = "bench"
pattern = "^pr-.*$"
date_format = "dd/MM/yyyy HH:mm:ss"
timezone = "Europe/Paris"
separator = ";"
encoding = "auto"
default_purpose = "email_global"
unknown_subscription = "passthrough"
[import.user_metadata]
source = "bench"
[import.subscriptions]
"12" = "newsletter_weekly"
TOML
}

file_config() { # STATE_DIR OUTBOX
  printf '[watch]\ndir = "%s/drop"\n[state]\ndir = "%s"\n[sink]\nkind = "file"\ndir = "%s"\nbatch_size = 100\n' "$work" "$1" "$2"
  imports
}

http_config() { # STATE_DIR BASE_URL CONCURRENCY
  printf '[watch]\ndir = "%s/drop"\n[state]\ndir = "%s"\n[sink]\nkind = "http"\nbase_url = "%s"\norganization_id = "bench"\nallow_insecure_http = true\ntoken_env = "PEER_BENCH_TOKEN"\nbatch_size = 100\nconcurrency = %s\ntimeout_s = 30\n' "$work" "$1" "$2" "$3"
  imports
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_server() {
  local port
  port="$(free_port)"
  "$server_bin" --listen "127.0.0.1:$port" --static-token peer-bench-token > "$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    grep -q "listening on" "$work/server.log" 2> /dev/null && break
    sleep 0.05
  done
  grep -q "listening on" "$work/server.log" || { cat "$work/server.log" >&2; exit 3; }
  base_url="http://127.0.0.1:$port"
}

stop_server() {
  kill -INT "$server_pid" 2> /dev/null || true
  wait "$server_pid" 2> /dev/null || true
  server_pid=""
}

# row TOOL ROWS BYTES TIMEFILE [NOTE]
row() {
  python3 - "$@" <<'PY'
import sys
tool, n, size, timefile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
note = sys.argv[5] if len(sys.argv) > 5 else ""
seconds, rss_kib = open(timefile).read().split()[-2:]
s = max(float(seconds), 0.01)
print(f"{tool:<32} {n:>9d} {s:9.2f} {n / s:11.0f} {size / s / 1e6:9.1f} {int(rss_kib) / 1024:10.1f}  {note}")
PY
}

timed() { # TIMEFILE COMMAND...
  local out="$1"; shift
  /usr/bin/time -f "%e %M" -o "$out" "$@"
}

mkdir -p "$work/drop"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); $("$bin" --version 2> /dev/null || echo consent-drop); $(mlr --version)"
printf '%-32s %9s %9s %11s %9s %10s  %s\n' tool rows seconds rows/s MB/s peak_MiB note
for n in ${*:-1000000 5000000}; do
  file_config "$work/state" "$work/outbox" > "$work/file.toml"
  file="$work/pr-bench-$n.csv"
  "$bin" sample -c "$work/file.toml" --import bench --rows "$n" -o "$file"
  bytes=$(stat -c %s "$file")
  cat "$file" > /dev/null # same page cache for everyone

  timed "$work/t" wc -l "$file" > /dev/null
  row "wc -l" "$n" "$bytes" "$work/t" "read limit"

  timed "$work/t" mlr --icsv --ifs ';' --allow-ragged-csv-input --ojsonl cat "$file" > "$work/mlr.jsonl"
  lines=$(wc -l < "$work/mlr.jsonl")
  row "mlr --icsv --ojsonl cat" "$n" "$bytes" "$work/t" "$lines JSON lines, no validation"
  rm -f "$work/mlr.jsonl"

  rm -rf "$work/state" "$work/outbox"
  timed "$work/t" "$bin" import --quiet -c "$work/file.toml" "$file" > /dev/null
  events=$(cat "$work"/outbox/*.ndjson | wc -l)
  row "consent-drop import -> file" "$n" "$bytes" "$work/t" "$events events, fsync'd"
  [ "$events" -eq "$n" ] || { echo "expected $n events, got $events" >&2; exit 1; }
  rm -rf "$work/state" "$work/outbox"

  if [ "$n" -le "$http_max_rows" ]; then
    for c in 1 4 8; do
      start_server
      http_config "$work/state-http" "$base_url" "$c" > "$work/http.toml"
      rm -rf "$work/state-http"
      PEER_BENCH_TOKEN=peer-bench-token timed "$work/t" "$bin" import --quiet -c "$work/http.toml" "$file" > /dev/null
      stop_server
      stored=$(grep -o 'events [0-9]*' "$work/server.log" | tail -1 | awk '{print $2}')
      row "consent-drop import -> API c=$c" "$n" "$bytes" "$work/t" "${stored:-?} events at the test API"
      [ "${stored:-0}" -eq "$n" ] || { echo "expected $n events at the API, got ${stored:-none}" >&2; exit 1; }
      rm -rf "$work/state-http"
    done
  else
    echo "consent-drop import -> API        (skipped above PEER_BENCH_HTTP_MAX_ROWS=$http_max_rows rows)"
  fi
  rm -f "$file"
done
