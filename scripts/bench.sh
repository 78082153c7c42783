#!/usr/bin/env bash
# Throughput and memory of `consent-drop import`, to the file sink and to the
# bundled test API.
#
#   scripts/bench.sh [ROWS...]        (default: 1000000 5000000)
#
# File sink, for each ROWS: generates a proof file with `consent-drop sample`,
# imports it (validation pass included) BENCH_ROUNDS times (default 3),
# alternated with Miller, and prints the medians: rows/s, MB/s, peak RSS and
# consent-drop's CPU seconds (user + system; the steadier figure on a busy
# machine), with the range of the rounds. For the first size, the same
# imports with state and sink on tmpfs (/dev/shm) follow: what of the gap to
# Miller, which writes to /dev/null, is the disk taking the fsynced NDJSON.
#
# HTTP, for BENCH_HTTP_ROWS rows (default 1000000; 0 skips it): one proof
# file, imported once to the file sink for its events (NDJSON), then over
# loopback to target/release/examples/test_server, a fresh one each run:
#   test_server alone   examples/api_load POSTs those events, in bodies of 100
#                       built before the clock starts, at concurrency 1, 4, 8
#                       (the server's own limit; with api_load's CPU seconds
#                       while sending: what a bare reqwest client pays for
#                       the same requests)
#   consent-drop        `import` to the http sink (batch_size 100) at
#                       concurrency 1, 4, 8, and 4 with gzip bodies, timed whole
# and prints requests/s (as counted by the server) and rows/s (one event a
# row), with consent-drop's peak RSS and CPU seconds; then consent-drop's requests/s at
# concurrency 4 as a percentage of the server's best alone, and whether it is
# within 20% of it (on small files consent-drop's start-up and validation
# pass weigh more, so judge it on a million rows). The test server keeps every
# event in memory (about 0.6 GB a million).
#
# Beside each file-sink run, Miller (`mlr`, installed by scripts/peer-bench.sh)
# converts the same file to JSON lines, in the same run: its rows/s and the
# ratio consent-drop / Miller are printed (skipped when mlr is missing).
#
# Storm, for BENCH_STORM_FILES files of 20 rows (default 6000; 0 skips it):
# the files are renamed into the drop folder of a running `consent-drop run`
# by one process, all at once (as an SFTP server's uploads land; a `mv` a
# file would take seconds of process starts on its own), once with the file
# sink and once to the test server; prints files/s (from the first rename to
# the last report; a file renamed in is read at once, without settle_ms),
# requests per 1,000 events, the daemon's peak RSS and CPU seconds (user +
# system).
#
# Partner files, for BENCH_PARTNER_ROWS rows (default 1000000; 0 skips it):
# the same rows as UTF-8, as UTF-16, as .csv.gz and with iso8601 dates.
#
# Needs GNU time (`apt-get install time`) for the seconds and peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
http_rows="${BENCH_HTTP_ROWS:-1000000}"
storm_files="${BENCH_STORM_FILES:-6000}"
[[ "$storm_files" =~ ^[0-9]+$ ]] || { echo "BENCH_STORM_FILES=$storm_files: not a number of files" >&2; exit 2; }
[[ "$http_rows" =~ ^[0-9]+$ ]] || { echo "BENCH_HTTP_ROWS=$http_rows: not a number of rows" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "GNU time missing: apt-get install time" >&2; exit 2; }
cargo build --release --quiet --bin consent-drop --example test_server --example api_load
bin="$PWD/target/release/consent-drop"
server_bin="$PWD/target/release/examples/test_server"
load_bin="$PWD/target/release/examples/api_load"
work="$(mktemp -d)"
server_pid=""
tmpfs_work=""
cleanup() {
  [ -z "$tmpfs_work" ] || rm -rf "$tmpfs_work"
  if [ -n "$server_pid" ]; then kill "$server_pid" 2> /dev/null || true; wait "$server_pid" 2> /dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

imports() { cat scripts/bench-import.toml; }

cat > "$work/bench.toml" <<TOML
[watch]
dir = "$work/drop"
[state]
dir = "$work/state"
[sink]
kind = "file"
dir = "$work/outbox"
organization_id = "bench"
batch_size = 100
$(imports)
TOML
mkdir -p "$work/drop"
# seconds, peak RSS (KiB), user and system CPU seconds
timer=(/usr/bin/time -f "%e %M %U %S")
# row_line LABEL ROWS BYTES "SECONDS..." "RSS_KIB..." "MILLER_SECONDS..." "CPU_S..."
# prints the medians of the rounds (and the highest peak RSS)
row_line() {
  python3 - "$@" <<'PY'
import statistics as st, sys
label, n, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seconds, rss, miller, cpu = ([float(x) for x in a.split()] for a in sys.argv[4:8])
s = max(st.median(seconds), 0.01)
miller_s = st.median(miller) if miller else 0
m, ratio = ("-", "-") if miller_s <= 0 else (f"{n/miller_s:.0f}", f"{miller_s/s:.2f}x")
spread = ""
if len(seconds) > 1:
    spread = f"  {min(seconds):.2f}-{max(seconds):.2f} s"
    if miller:
        spread += f", Miller {min(miller):.2f}-{max(miller):.2f} s"
print(f"{label:<10} {s:12.2f} {n/s:10.0f} {b/s/1e6:10.1f} {max(rss)/1024:12.1f} {m:>12} {ratio:>8} {st.median(cpu):8.2f}{spread}")
PY
}

# import_once CONFIG FILE: one import, its figures appended to the rounds'
import_once() {
  rm -rf "$work/state" "$work/outbox"
  [ -z "$tmpfs_work" ] || rm -rf "$tmpfs_work/state" "$tmpfs_work/outbox"
  "${timer[@]}" -o "$work/time" "$bin" import --quiet -c "$1" "$2" > /dev/null
  read -r seconds rss_kib user_s sys_s < "$work/time"
  round_seconds+=" $seconds"
  round_rss+=" $rss_kib"
  round_cpu+=" $(awk -v u="$user_s" -v s="$sys_s" 'BEGIN { printf "%.2f", u + s }')"
}

rounds="${BENCH_ROUNDS:-3}"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_ROUNDS=$rounds: not a number of rounds" >&2; exit 2; }
# For the first size, the same import with its state and sink on tmpfs:
# how much of the gap to Miller (which writes to /dev/null) is the disk.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  tmpfs_work="$(mktemp -d /dev/shm/consent-drop-bench.XXXXXX)"
  sed -e "s#$work/state#$tmpfs_work/state#" -e "s#$work/outbox#$tmpfs_work/outbox#" \
    "$work/bench.toml" > "$work/tmpfs.toml"
fi
echo "Row path: import to the file sink, medians of $rounds rounds alternated with Miller"
printf '%-10s %12s %10s %10s %12s %12s %8s %8s\n' rows seconds rows/s MB/s peak_RSS_MiB miller_rows/s ratio cpu_s
first_size=true
for rows in "${@:-1000000 5000000}"; do
  for n in $rows; do
    file="$work/pr-bench-$n.csv"
    "$bin" sample -c "$work/bench.toml" --import bench --rows "$n" -o "$file"
    bytes=$(stat -c %s "$file")
    round_seconds="" round_rss="" round_cpu="" miller_seconds=""
    for _ in $(seq 1 "$rounds"); do
      import_once "$work/bench.toml" "$file"
      if command -v mlr > /dev/null; then
        "${timer[@]}" -o "$work/mtime" mlr --icsv --ifs ';' --allow-ragged-csv-input --ojsonl cat "$file" > /dev/null
        read -r seconds _ < "$work/mtime"
        miller_seconds+=" $seconds"
      fi
    done
    row_line "$n" "$n" "$bytes" "$round_seconds" "$round_rss" "$miller_seconds" "$round_cpu"
    lines=$(cat "$work"/outbox/*.ndjson | wc -l)
    [ "$lines" -le "$n" ] || { echo "more events than rows?" >&2; exit 1; }
    # State and sink take about 6x the CSV (NDJSON, the copy, the index):
    # skipped rather than failing the whole run on a small /dev/shm.
    if $first_size && [ -n "$tmpfs_work" ] &&
      [ "$(df --output=avail -B1 /dev/shm | tail -1)" -gt $((bytes * 8)) ]; then
      round_seconds="" round_rss="" round_cpu=""
      for _ in $(seq 1 "$rounds"); do import_once "$work/tmpfs.toml" "$file"; done
      row_line "  tmpfs" "$n" "$bytes" "$round_seconds" "$round_rss" "$miller_seconds" "$round_cpu"
      rm -rf "$tmpfs_work/state" "$tmpfs_work/outbox"
    fi
    first_size=false
    rm -f "$file"
  done
done

# --- Partner files: the same rows as UTF-16, as .csv.gz, with iso8601 dates --
# BENCH_PARTNER_ROWS (default 1000000; 0 skips it) rows, written by `sample`
# for each import below (the same contacts, purposes and instants), imported
# to the file sink; rows/s and peak RSS for each, UTF-8 first as the reference.
partner_files() {
  local rows="$1" kind file import bytes seconds rss_kib
  cat >> "$work/bench.toml" <<'TOML'
[[import]]
name = "bench-utf16"
pattern = "^u16-.*$"
date_format = "dd/MM/yyyy HH:mm:ss"
timezone = "Europe/Paris"
separator = ";"
encoding = "utf-16"
default_purpose = "email_global"
unknown_subscription = "passthrough"
[[import]]
name = "bench-iso"
pattern = "^iso-.*$"
date_format = "iso8601"
timezone = "Europe/Paris"
separator = ";"
encoding = "auto"
default_purpose = "email_global"
unknown_subscription = "passthrough"
TOML
  echo
  echo "Partner files: $rows rows, file sink"
  printf '%-22s %12s %10s %10s %12s\n' file seconds rows/s MB/s peak_RSS_MiB
  for kind in utf-8 utf-16 csv.gz iso8601; do
    case "$kind" in
      utf-8) import=bench; file="$work/pr-partner.csv" ;;
      utf-16) import=bench-utf16; file="$work/u16-partner.txt" ;;
      csv.gz) import=bench; file="$work/pr-partner-gz.csv" ;;
      iso8601) import=bench-iso; file="$work/iso-partner.csv" ;;
    esac
    "$bin" sample -c "$work/bench.toml" --import "$import" --rows "$rows" -o "$file"
    if [ "$kind" = csv.gz ]; then gzip -1 "$file"; file="$file.gz"; fi
    bytes=$(stat -c %s "$file")
    rm -rf "$work/state" "$work/outbox"
    "${timer[@]}" -o "$work/time" "$bin" import --quiet -c "$work/bench.toml" "$file" > /dev/null
    read -r seconds rss_kib _ < "$work/time"
    python3 - "$kind" "$rows" "$seconds" "$bytes" "$rss_kib" <<'PY'
import sys
kind, n, s, b, rss = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
s = max(s, 0.01)
print(f"{kind:<22} {s:12.2f} {n/s:10.0f} {b/s/1e6:10.1f} {rss/1024:12.1f}")
PY
    [ "$(cat "$work"/outbox/*.ndjson | wc -l)" -eq "$rows" ] || { echo "$kind: expected $rows events" >&2; exit 1; }
    rm -f "$file"
  done
}
partner_rows="${BENCH_PARTNER_ROWS:-1000000}"
[[ "$partner_rows" =~ ^[0-9]+$ ]] || { echo "BENCH_PARTNER_ROWS=$partner_rows: not a number of rows" >&2; exit 2; }
[ "$partner_rows" -eq 0 ] || partner_files "$partner_rows"

[ "$http_rows" -gt 0 ] || [ "$storm_files" -gt 0 ] || exit 0

# --- HTTP: the test API alone, then consent-drop delivering to it ---------

token=bench-token

http_config() { # BASE_URL CONCURRENCY GZIP
  printf '[watch]\ndir = "%s/drop"\n[state]\ndir = "%s/state-http"\n[sink]\nkind = "http"\nbase_url = "%s"\norganization_id = "bench"\nallow_insecure_http = true\ntoken_env = "BENCH_TOKEN"\nbatch_size = 100\nconcurrency = %s\ntimeout_s = 30\ngzip = %s\n' "$work" "$work" "$1" "$2" "$3"
  imports
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_server() { # sets base_url
  local port
  port="$(free_port)"
  "$server_bin" --listen "127.0.0.1:$port" --static-token "$token" > "$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    grep -q "listening on" "$work/server.log" 2> /dev/null && break
    sleep 0.05
  done
  grep -q "listening on" "$work/server.log" || { cat "$work/server.log" >&2; exit 3; }
  base_url="http://127.0.0.1:$port"
}

stop_server() { # sets served_requests, served_events, served_duplicates
  kill -INT "$server_pid" 2> /dev/null || true
  wait "$server_pid" 2> /dev/null || true
  server_pid=""
  read -r served_requests served_events served_duplicates < <(
    awk '/^stopped:/ { print $3, $5, $7 }' "$work/server.log")
  [ -n "${served_duplicates:-}" ] || { echo "the test server did not report its counts:" >&2; cat "$work/server.log" >&2; exit 3; }
}

# http_row RUN CONCURRENCY REQUESTS ROWS SECONDS RSS_KIB|- NOTE
http_row() {
  python3 - "$@" <<'PY'
import sys
run, c, requests, n, seconds, rss, note = sys.argv[1:8]
s = max(float(seconds), 0.01)
rss = "-" if rss == "-" else f"{int(rss) / 1024:.1f}"
print(f"{run:<20} {c:>2} {int(requests):>9d} {s:9.2f} {int(requests) / s:11.1f} {int(n) / s:10.0f} {rss:>9}  {note}")
PY
}

if [ "$http_rows" -gt 0 ]; then
file="$work/pr-bench-http.csv"
"$bin" sample -c "$work/bench.toml" --import bench --rows "$http_rows" -o "$file"
rm -rf "$work/state" "$work/outbox"
"$bin" import --quiet -c "$work/bench.toml" "$file" > /dev/null
events=$(cat "$work"/outbox/*.ndjson | wc -l)
[ "$events" -eq "$http_rows" ] || { echo "expected $http_rows events from the file sink, got $events" >&2; exit 1; }

echo
echo "HTTP: $http_rows rows to the test API on loopback, batches of 100 ($(nproc) cores)"
printf '%-20s %2s %9s %9s %11s %10s %9s  %s\n' run c requests seconds requests/s rows/s peak_MiB note
declare -A alone_rps daemon_rps
for c in 1 4 8; do
  start_server
  "$load_bin" --url "$base_url" --organization bench --token "$token" --concurrency "$c" --batch 100 \
    "$work"/outbox/*.ndjson > "$work/load.out"
  stop_server
  read -r sent seconds load_cpu < <(awk '{ print $2, $6, $12 }' "$work/load.out")
  if [ "$served_events" -ne "$http_rows" ] || [ "$served_requests" -ne "$sent" ]; then
    echo "api_load sent $sent requests; the server counted $served_requests requests, $served_events events (expected $http_rows)" >&2
    exit 1
  fi
  alone_rps[$c]=$(awk -v r="$sent" -v s="$seconds" 'BEGIN { printf "%.1f", r / (s > 0.01 ? s : 0.01) }')
  http_row "test_server alone" "$c" "$sent" "$http_rows" "$seconds" - "api_load; $served_events events stored, $load_cpu s of CPU sending"
done
for run in 1 4 8 4-gzip; do
  c="${run%-gzip}"
  gzip=false
  [ "$run" = "$c" ] || gzip=true
  start_server
  http_config "$base_url" "$c" "$gzip" > "$work/http.toml"
  rm -rf "$work/state-http"
  BENCH_TOKEN="$token" "${timer[@]}" -o "$work/time" "$bin" import --quiet -c "$work/http.toml" "$file" > /dev/null
  stop_server
  read -r seconds rss_kib user_s sys_s < "$work/time"
  [ "$served_events" -eq "$http_rows" ] || { echo "expected $http_rows events at the test server, got $served_events" >&2; exit 1; }
  [ "$gzip" = true ] || daemon_rps[$c]=$(awk -v r="$served_requests" -v s="$seconds" 'BEGIN { printf "%.1f", r / (s > 0.01 ? s : 0.01) }')
  note="$served_events events stored, $(awk -v u="$user_s" -v s="$sys_s" 'BEGIN { printf "%.2f", u + s }') s of CPU"
  [ "$gzip" = false ] || note="$note, gzip bodies"
  [ "$served_duplicates" -eq 0 ] || note="$note, $served_duplicates duplicates"
  http_row "consent-drop import" "$c" "$served_requests" "$http_rows" "$seconds" "$rss_kib" "$note"
done
rm -f "$file"

best_c=1
for c in 4 8; do
  awk -v a="${alone_rps[$c]}" -v b="${alone_rps[$best_c]}" 'BEGIN { exit !(a > b) }' && best_c=$c
done
awk -v d="${daemon_rps[4]}" -v a="${alone_rps[$best_c]}" -v bc="$best_c" 'BEGIN {
  pct = 100 * d / a
  verdict = pct >= 80 ? "within 20%: the test server is the bottleneck" \
                      : "NOT within 20%: consent-drop is the bottleneck"
  printf "\nconcurrency 4: consent-drop %.1f requests/s = %.0f%% of the test server alone (best %.1f requests/s, at concurrency %d): %s\n", d, pct, a, bc, verdict
}'
fi

# --- Storm: many small files renamed into a running daemon ------------------

[ "$storm_files" -gt 0 ] || exit 0

storm_files_make() { # DIR COUNT
  python3 - "$1" "$2" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for f in range(n):
    rows = ["email;purpose;date;origin;subscription"]
    for i in range(20):
        rows.append(f"u{f}x{i}@example.com;J'accepte;{1 + i % 28:02d}/06/2020 21:28:{i % 60:02d};203.0.113.{i % 250};{'12' if i % 3 == 0 else ''}")
    with open(os.path.join(d, f"pr-storm-{f:06d}.csv"), "w") as out:
        out.write("\n".join(rows) + "\n")
PY
}

storm_run() { # NAME SINK_TABLE -> prints a row
  local name="$1" sink="$2" dir="$work/storm-$1"
  rm -rf "$dir"; mkdir -p "$dir/drop" "$dir/stage"
  printf '[watch]\ndir = "%s/drop"\n[state]\ndir = "%s/state"\n[sink]\n%s\n' "$dir" "$dir" "$sink" > "$dir/c.toml"
  imports >> "$dir/c.toml"
  storm_files_make "$dir/stage" "$storm_files"
  BENCH_TOKEN="$token" "${timer[@]}" -o "$dir/time" "$bin" run -c "$dir/c.toml" 2> "$dir/log" &
  local pid=$!
  for _ in $(seq 1 100); do grep -q "consent-drop is running" "$dir/log" 2> /dev/null && break; sleep 0.05; done
  local start end
  start=$(date +%s.%N)
  python3 -c 'import os, sys
stage, drop = sys.argv[1:3]
for name in sorted(os.listdir(stage)):
    os.rename(os.path.join(stage, name), os.path.join(drop, name))' "$dir/stage" "$dir/drop"
  until [ "$(find "$dir/state/archive" -name '*.report.json' 2> /dev/null | wc -l)" -ge "$storm_files" ]; do sleep 0.1; done
  end=$(date +%s.%N)
  pkill -TERM -P "$pid" 2> /dev/null || kill -TERM "$pid"
  wait "$pid" || true
  read -r _ rss_kib user_s sys_s < "$dir/time"
  echo "$name $start $end $rss_kib $(awk -v u="$user_s" -v s="$sys_s" 'BEGIN { printf "%.2f", u + s }')"
}

token=bench-token
echo
echo "Storm: $storm_files files of 20 rows renamed into a running daemon"
printf '%-12s %9s %9s %16s %9s %8s\n' sink seconds files/s requests/1000ev peak_MiB cpu_s
read -r _ start end rss cpu < <(storm_run file "kind = \"file\"
dir = \"$work/storm-file/outbox\"
batch_size = 100")
awk -v s="$start" -v e="$end" -v n="$storm_files" -v r="$rss" -v c="$cpu" 'BEGIN { t = e - s; printf "%-12s %9.2f %9.0f %16s %9.1f %8s\n", "file", t, n / t, "-", r / 1024, c }'
start_server
read -r _ start end rss cpu < <(storm_run http "kind = \"http\"
base_url = \"$base_url\"
organization_id = \"bench\"
allow_insecure_http = true
token_env = \"BENCH_TOKEN\"
batch_size = 100")
stop_server
awk -v s="$start" -v e="$end" -v n="$storm_files" -v r="$rss" -v c="$cpu" -v q="$served_requests" -v ev="$served_events" 'BEGIN { t = e - s; printf "%-12s %9.2f %9.0f %16.1f %9.1f %8s\n", "test server", t, n / t, 1000 * q / ev, r / 1024, c }'
