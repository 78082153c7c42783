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
# and prints rows/s, MB/s and peak RSS (GNU time's %M) for each. Delivery to
# the test API, and the API's own limit, are in scripts/bench.sh.
#
# Installs GNU time (package `time`) and Miller (package `miller`) with
# apt-get when they are missing.
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

cargo build --release --quiet --bin consent-drop
bin="$PWD/target/release/consent-drop"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

imports() { cat scripts/bench-import.toml; }

file_config() { # STATE_DIR OUTBOX
  printf '[watch]\ndir = "%s/drop"\n[state]\ndir = "%s"\n[sink]\nkind = "file"\ndir = "%s"\nbatch_size = 100\n' "$work" "$1" "$2"
  imports
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
sizes=("$@")
[ "${#sizes[@]}" -gt 0 ] || sizes=(1000000 5000000)
for n in "${sizes[@]}"; do
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
  rm -rf "$work/state" "$work/outbox" "$file"
done
