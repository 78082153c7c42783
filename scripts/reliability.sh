#!/usr/bin/env bash
# The opt-in reliability suite: the ignored tests of tests/reliability.rs
# (kill -9 crash loop, API chaos, full disk), the power cuts of
# tests/powercut.rs (a FUSE file system that forgets what was not synced),
# the big hostile files of tests/hostile.rs, then the fuzzers with more cases.
#
#   scripts/reliability.sh            short sizes, debug build (what CI runs)
#   scripts/reliability.sh --long     full sizes, release build (or RELIABILITY_LONG=1)
#
# Short: CRASH_ROUNDS=3 CRASH_ROWS=10000 CHAOS_ROWS=10000 FULLDISK_ROWS=20000
#        POWERCUT_CUTS=10 HOSTILE_BIG_MB=64 FUZZ_CASES=1000
# Long:  CRASH_ROUNDS=20 CRASH_ROWS=200000 CHAOS_ROWS=100000 FULLDISK_ROWS=100000
#        POWERCUT_CUTS=500 HOSTILE_BIG_MB=1024 FUZZ_CASES=20000
# Any of them set in the environment wins. The full-disk tests mount a tmpfs
# and the power-cut tests a FUSE file system: without root (or, for FUSE,
# fusermount3) they print SKIPPED, unless CONSENT_DROP_REQUIRE_ROOT=1.
set -euo pipefail
cd "$(dirname "$0")/.."
long="${RELIABILITY_LONG:-0}"
for arg in "$@"; do
  case "$arg" in
    --long) long=1 ;;
    --short) long=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $arg (--long, --short)" >&2; exit 2 ;;
  esac
done
if [ "$long" = 1 ]; then
  profile=(--release)
  : "${CRASH_ROUNDS:=20}" "${CRASH_ROWS:=200000}" "${CHAOS_ROWS:=100000}" "${FULLDISK_ROWS:=100000}"
  : "${POWERCUT_CUTS:=500}"
  : "${HOSTILE_BIG_MB:=1024}" "${FUZZ_CASES:=20000}"
else
  profile=()
  : "${CRASH_ROUNDS:=3}" "${CRASH_ROWS:=10000}" "${CHAOS_ROWS:=10000}" "${FULLDISK_ROWS:=20000}"
  : "${POWERCUT_CUTS:=10}"
  : "${HOSTILE_BIG_MB:=64}" "${FUZZ_CASES:=1000}"
fi
export CRASH_ROUNDS CRASH_ROWS CHAOS_ROWS FULLDISK_ROWS POWERCUT_CUTS HOSTILE_BIG_MB FUZZ_CASES
echo "== reliability ($([ "$long" = 1 ] && echo long || echo short)): crash ${CRASH_ROUNDS}x${CRASH_ROWS}, chaos ${CHAOS_ROWS}, full disk ${FULLDISK_ROWS}, power cuts ${POWERCUT_CUTS}, big line ${HOSTILE_BIG_MB} MB, fuzz ${FUZZ_CASES} cases"
start=$SECONDS
echo "== tests/reliability.rs (ignored tests)"
cargo test "${profile[@]}" --test reliability -- --ignored --test-threads 1 --nocapture
echo "== tests/powercut.rs (ignored tests: FUSE power cuts)"
cargo test "${profile[@]}" --test powercut -- --ignored --test-threads 1 --nocapture --skip without_
echo "== tests/hostile.rs at scale"
cargo test "${profile[@]}" --test hostile hostile_files_at_scale -- --ignored --nocapture
echo "== tests/hostile_drops.rs at scale (gzip bomb, unclosed quote)"
cargo test "${profile[@]}" --test hostile_drops hostile_drops_at_scale -- --ignored --nocapture
echo "== fuzzing (${FUZZ_CASES} cases each)"
cargo test "${profile[@]}" --test hostile fuzz_
echo "== tests/powercut.rs with a deliberate fault: the crash test must catch a missing fsync"
# Last: a build with the feature, so that the steps above share one build.
cargo test "${profile[@]}" --features fault-injection --test powercut without_ -- --ignored --nocapture
echo "== reliability suite passed in $((SECONDS - start)) s"
