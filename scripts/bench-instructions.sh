#!/usr/bin/env bash
# Instructions an import costs, by stage: a before/after that the noise of a
# shared machine does not move (opt-in, not in CI).
#
#   scripts/bench-instructions.sh [ROWS] [BIN...]    (default: 100000, this tree)
#
# Generates one proof file of ROWS rows with `consent-drop sample` and imports
# it to the file sink under `valgrind --tool=callgrind` once for each BIN
# (default: target/release/consent-drop, built first). Prints, per BIN, the
# user-space instructions in millions: the whole run, and inclusive of the
# validation pass, the delivery's parse, event building and the claim's
# fingerprint; then the whole run against the first BIN in percent.
#
# Counts repeat within about 0.5% from run to run (threads interleave
# differently), but they are not time: valgrind runs SHA-1 and SHA-256 in
# software (no SHA instructions), so those weigh more than on the machine,
# and the kernel's work (copies, fsyncs) is not counted.
# Stage figures follow function names, which inlining can change between
# builds: compare totals across builds. Time figures are in scripts/bench.sh.
# Needs valgrind (`apt-get install valgrind`); 100k rows take about 15 s a BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-100000}"
shift || true
[[ "$rows" =~ ^[0-9]+$ ]] || { echo "ROWS=$rows: not a number of rows" >&2; exit 2; }
command -v valgrind > /dev/null || { echo "valgrind missing: apt-get install valgrind" >&2; exit 2; }
if [ "$#" -eq 0 ]; then
  cargo build --release --quiet --bin consent-drop
  set -- "$PWD/target/release/consent-drop"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
config() {
  printf '[watch]\ndir = "%s/drop"\n[state]\ndir = "%s/state"\n[sink]\nkind = "file"\ndir = "%s/outbox"\norganization_id = "bench"\nbatch_size = 100\n' "$work" "$work" "$work"
  cat scripts/bench-import.toml
}
config > "$work/bench.toml"
mkdir -p "$work/drop"
"$1" sample -c "$work/bench.toml" --import bench --rows "$rows" -o "$work/pr-bench.csv"

# inclusive REGEX: millions of instructions in the first (outermost)
# function of the run's inclusive listing whose line matches REGEX
inclusive() {
  awk -v f="$1" '$0 ~ f && $2 ~ /^\(/ { gsub(",", "", $1); printf "%.0f", $1 / 1e6; found = 1; exit }
    END { if (!found) printf "-" }' "$work/inclusive.txt"
}

printf '%-40s %10s %10s %10s %10s %12s %8s\n' binary total_M validate_M parse_M events_M fingerprint_M vs_first
first=""
for bin in "$@"; do
  rm -rf "$work/state" "$work/outbox"
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$bin" import --quiet -c "$work/bench.toml" "$work/pr-bench.csv" > /dev/null 2> "$work/cg.err" ||
    { cat "$work/cg.err" >&2; exit 1; }
  total=$(awk '/Collected :/ { print $NF }' "$work/cg.err")
  [ -n "$total" ] || { echo "no instruction count from valgrind:" >&2; cat "$work/cg.err" >&2; exit 1; }
  first="${first:-$total}"
  callgrind_annotate --inclusive=yes "$work/cg.out" > "$work/inclusive.txt" 2> /dev/null
  printf '%-40s %10.0f %10s %10s %10s %12s %7.1f%%\n' "$(basename "$bin")" "$(awk -v t="$total" 'BEGIN { print t / 1e6 }')" \
    "$(inclusive 'rejects::validate')" \
    "$(inclusive 'produce::produce ')" \
    "$(inclusive 'EventWriter::write ')" \
    "$(inclusive '(claim::hash_as_copied|Fingerprinting::feed) ')" \
    "$(awk -v t="$total" -v f="$first" 'BEGIN { print 100 * t / f }')"
done
