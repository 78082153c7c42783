#!/usr/bin/env bash
# Throughput and memory of `consent-drop import` to the file sink.
#
#   scripts/bench.sh [ROWS...]        (default: 1000000 5000000)
#
# Generates a proof file with `consent-drop sample`, imports it (validation
# pass included) and prints rows/s, MB/s and peak RSS. Needs GNU time
# (`apt-get install time`) for the peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin="$PWD/target/release/consent-drop"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/bench.toml" <<TOML
[watch]
dir = "$work/drop"
[state]
dir = "$work/state"
[sink]
kind = "file"
dir = "$work/outbox"
batch_size = 100
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
mkdir -p "$work/drop"
timer=(/usr/bin/time -f "%e %M")
[ -x /usr/bin/time ] || { echo "GNU time missing: apt-get install time" >&2; exit 2; }
printf '%-10s %12s %10s %10s %12s\n' rows seconds rows/s MB/s peak_RSS_MiB
for rows in "${@:-1000000 5000000}"; do
  for n in $rows; do
    file="$work/pr-bench-$n.csv"
    "$bin" sample -c "$work/bench.toml" --import bench --rows "$n" -o "$file"
    bytes=$(stat -c %s "$file")
    rm -rf "$work/state" "$work/outbox"
    "${timer[@]}" -o "$work/time" "$bin" import --quiet -c "$work/bench.toml" "$file" > /dev/null
    read -r seconds rss_kib < "$work/time"
    python3 - "$n" "$seconds" "$bytes" "$rss_kib" <<'PY'
import sys
n, s, b, rss = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = max(s, 0.01)
print(f"{n:<10d} {s:12.2f} {n/s:10.0f} {b/s/1e6:10.1f} {rss/1024:12.1f}")
PY
    lines=$(cat "$work"/outbox/*.ndjson | wc -l)
    [ "$lines" -le "$n" ] || { echo "more events than rows?" >&2; exit 1; }
    rm -f "$file"
  done
done
