#!/usr/bin/env bash
# What the trace index costs and gives (opt-in, not in CI).
#
#   scripts/bench-trace.sh [FILES] [ROWS_PER_FILE]     (default: 10 1000000)
#
# 1. The import cost of the index: one proof file of ROWS_PER_FILE rows
#    (`consent-drop sample`) imported to the file sink into a fresh state
#    folder, alternately with the index off (CONSENT_DROP_BENCH_NO_INDEX=1)
#    and on, 3 times each; prints each run's rows/s, the best of each and
#    the cost of the index in percent (best on vs best off).
# 2. An archive of FILES × ROWS_PER_FILE events (FILES distinct files made
#    from the sample by changing the e-mail domain, imported one by one;
#    their outbox files are deleted as they come, only a few ids are kept).
# 3. `trace EVENT_ID` wall time for ids spread over the files (first, middle
#    and last rows), and for an id never imported.
# 4. `trace --email` of one contact: wall time and archived rows read per second.
#
# Needs about 90 bytes a row of disk in a temporary folder (the archive) plus
# the largest outbox file; 10M rows take a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
files="${1:-10}"
rows="${2:-1000000}"
cargo build --release --quiet --bin consent-drop
bin="$PWD/target/release/consent-drop"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

config() { # STATE_DIR
  printf '[watch]\ndir = "%s/drop"\n[state]\ndir = "%s"\n[sink]\nkind = "file"\ndir = "%s/outbox"\nbatch_size = 100\n' "$work" "$1" "$work"
  cat scripts/bench-import.toml
}
mkdir -p "$work/drop"
config "$work/state" > "$work/bench.toml"
now() { date +%s.%N; }
rate() { python3 -c "import sys; n, s = float(sys.argv[1]), float(sys.argv[2]); print(f'{n / max(s, 1e-9):.0f}')" "$@"; }

"$bin" sample -c "$work/bench.toml" --import bench --rows "$rows" -o "$work/base.csv"

echo "== import cost of the index ($rows rows, file sink) =="
best_off=0
best_on=0
for round in 1 2 3; do
  for mode in off on; do
    rm -rf "$work/cost-state" "$work/outbox"
    config "$work/cost-state" > "$work/cost.toml"
    cp "$work/base.csv" "$work/pr-cost.csv"
    start=$(now)
    if [ "$mode" = off ]; then
      CONSENT_DROP_BENCH_NO_INDEX=1 "$bin" import --quiet -c "$work/cost.toml" "$work/pr-cost.csv" > /dev/null
    else
      "$bin" import --quiet -c "$work/cost.toml" "$work/pr-cost.csv" > /dev/null
    fi
    seconds=$(python3 -c "print($(now) - $start)")
    r=$(rate "$rows" "$seconds")
    printf 'round %s  index %-3s  %6.2f s  %9s rows/s\n' "$round" "$mode" "$seconds" "$r"
    if [ "$mode" = off ] && [ "$r" -gt "$best_off" ]; then best_off=$r; fi
    if [ "$mode" = on ] && [ "$r" -gt "$best_on" ]; then best_on=$r; fi
  done
done
python3 -c "off, on = $best_off, $best_on; print(f'best: index off {off} rows/s, on {on} rows/s: the index costs {100 * (off - on) / off:.1f}% of import throughput')"
rm -rf "$work/cost-state" "$work/outbox" "$work/pr-cost.csv"

echo "== building an archive of $((files * rows)) events =="
ids=()
start=$(now)
for i in $(seq 1 "$files"); do
  sed "s/@example\./@f$i.example./" "$work/base.csv" > "$work/pr-trace-$i.csv"
  "$bin" import --quiet -c "$work/bench.toml" "$work/pr-trace-$i.csv" > /dev/null
  rm -f "$work/pr-trace-$i.csv"
  out=$(ls "$work"/outbox/*.ndjson | tail -n 1)
  for line in 1 $((rows / 2)) "$rows"; do
    ids+=("$(sed -n "${line}p" "$out" | python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["id"])')")
  done
  if [ "$i" -eq $(((files + 1) / 2)) ]; then
    email=$(sed -n "$((rows / 3))p" "$out" | python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["user"]["organization_user_id"])')
  fi
  rm -f "$work"/outbox/*
done
printf 'archive built in %.0f s: %s, index %s\n' "$(python3 -c "print($(now) - $start)")" \
  "$(du -sh "$work/state/archive" | cut -f1)" "$(du -sh "$work/state/index" | cut -f1)"
ls "$work/state/index"/*/ | grep -c '\.run$' | xargs printf 'index runs: %s\n'

echo "== trace EVENT_ID over $((files * rows)) events =="
worst=0
for id in "${ids[@]}" 00000000-0000-5000-8000-000000000000; do
  start=$(now)
  code=0
  "$bin" trace -c "$work/bench.toml" "$id" > "$work/trace.out" || code=$?
  seconds=$(python3 -c "print($(now) - $start)")
  printf '%s  exit %s  %.3f s  line %s\n' "$id" "$code" "$seconds" \
    "$(grep -m1 '^  line' "$work/trace.out" | awk '{print $2}')"
  worst=$(python3 -c "print(max($worst, $seconds))")
done
printf 'slowest trace EVENT_ID: %.3f s\n' "$worst"

echo "== trace --email over $((files * rows)) archived rows =="
start=$(now)
"$bin" trace -c "$work/bench.toml" --email "$email" > "$work/email.out" 2> "$work/email.err"
seconds=$(python3 -c "print($(now) - $start)")
cat "$work/email.err"
head -n 1 "$work/email.out"
printf 'trace --email: %.2f s, %s archived rows/s\n' "$seconds" "$(rate $((files * rows)) "$seconds")"
