#!/usr/bin/env bash
# kill -9 crash loop: the daemon is killed at random moments (seeded) while a
# proof file goes to the test consents API, and restarted each time; at the
# end every event must be at the API exactly once, nothing left in
# processing/, and the journal must say archived.
#
#   scripts/crash-loop.sh                 3 rounds, 10,000 rows (CI size)
#   scripts/crash-loop.sh --full          20 rounds, 200,000 rows
#   scripts/crash-loop.sh ROUNDS [ROWS [SEED]]
#
# CRASH_ROUNDS, CRASH_ROWS, CRASH_SEED and CRASH_MAX_PAUSE_MS (longest pause
# before a kill, default 1500) work too. Prints every round and the
# duplicate deliveries the API absorbed. Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--full" ]; then
  export CRASH_ROUNDS="${CRASH_ROUNDS:-20}" CRASH_ROWS="${CRASH_ROWS:-200000}"
  shift
fi
[ -n "${1:-}" ] && export CRASH_ROUNDS="$1"
[ -n "${2:-}" ] && export CRASH_ROWS="$2"
[ -n "${3:-}" ] && export CRASH_SEED="$3"
echo "crash loop: rounds ${CRASH_ROUNDS:-3}, rows ${CRASH_ROWS:-10000}, seed ${CRASH_SEED:-0xC0FFEE}"
exec cargo test --release --test reliability crash_loop -- --ignored --nocapture --test-threads 1
