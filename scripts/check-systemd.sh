#!/usr/bin/env bash
# Checks systemd/consent-drop.service without installing anything:
#   1. `systemd-analyze verify` on a copy whose ExecStart is the built binary
#      (the real unit names /usr/bin/consent-drop, absent before the package);
#   2. `systemd-analyze security --offline=true`: prints the exposure and
#      fails above MAX_EXPOSURE (default 2.0);
#   3. with strace: runs the daemon on a temporary drop folder (file sink,
#      metrics on), imports a file, scrapes /metrics and /healthz, stops it
#      with SIGTERM, and fails if it made a system call that the unit's
#      SystemCallFilter= would refuse. SKIP_SYSCALLS=1 skips this step.
#
# Usage: scripts/check-systemd.sh [path/to/consent-drop]
# Default binary: target/release/consent-drop, else target/debug/consent-drop
# (built with `cargo build` when neither exists).
# Needs: systemd-analyze (Debian: apt-get install -y systemd), strace for 3.
set -euo pipefail

cd "$(dirname "$0")/.."
UNIT=systemd/consent-drop.service
MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}

fail() { echo "check-systemd: FAIL: $*" >&2; exit 1; }

command -v systemd-analyze >/dev/null ||
    fail "systemd-analyze is missing (Debian: apt-get install -y systemd)"
echo "check-systemd: $(systemd-analyze --version | head -n1)"

BIN=${1:-}
if [ -z "$BIN" ]; then
    for candidate in target/release/consent-drop target/debug/consent-drop; do
        if [ -x "$candidate" ]; then BIN=$candidate; break; fi
    done
fi
if [ -z "$BIN" ]; then
    cargo build --quiet --bin consent-drop
    BIN=target/debug/consent-drop
fi
[ -x "$BIN" ] || fail "$BIN is not an executable"
BIN=$(realpath "$BIN")

WORK=$(mktemp -d)
DAEMON_PID=
STRACE_PID=
cleanup() {
    if [ -n "$DAEMON_PID" ]; then kill -KILL "$DAEMON_PID" 2>/dev/null || true; fi
    if [ -n "$STRACE_PID" ]; then kill -KILL "$STRACE_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. verify ---------------------------------------------------------------
mkdir -p "$WORK/unit"
sed "s|^ExecStart=/usr/bin/consent-drop |ExecStart=$BIN |" "$UNIT" >"$WORK/unit/consent-drop.service"
grep -q "^ExecStart=$BIN " "$WORK/unit/consent-drop.service" || fail "no ExecStart=/usr/bin/consent-drop in $UNIT"
if ! output=$(systemd-analyze verify "$WORK/unit/consent-drop.service" 2>&1) || [ -n "$output" ]; then
    echo "$output" >&2
    fail "systemd-analyze verify $UNIT"
fi
echo "check-systemd: verify: ok"

# 2. security -------------------------------------------------------------
report=$(systemd-analyze security --offline=true --no-pager "$UNIT" 2>&1) || true
exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$report")
[ -n "$exposure" ] || { echo "$report" >&2; fail "no exposure level in the security report"; }
grep '✗' <<<"$report" || true
echo "check-systemd: security: exposure $exposure (at most $MAX_EXPOSURE)"
awk -v e="$exposure" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(e <= max) }' ||
    fail "exposure $exposure is above $MAX_EXPOSURE"

# 3. system calls ---------------------------------------------------------
if [ "${SKIP_SYSCALLS:-0}" = 1 ]; then
    echo "check-systemd: system calls: skipped (SKIP_SYSCALLS=1)"
    exit 0
fi
command -v strace >/dev/null || fail "strace is missing (apt-get install -y strace), or set SKIP_SYSCALLS=1"

# What SystemCallFilter= allows: the allow-list lines minus the ~ lines.
expand() {
    local entry
    for entry in $(systemd-analyze syscall-filter --no-pager "$1" | tail -n +2 | grep -v '^[[:space:]]*#'); do
        case $entry in
            @*) expand "$entry" ;;
            *) echo "$entry" ;;
        esac
    done
}
allowed='' denied=''
while IFS= read -r value; do
    case $value in
        '~'*) denied+=" ${value#\~}" ;;
        *) allowed+=" $value" ;;
    esac
done < <(sed -n 's/^SystemCallFilter=//p' "$UNIT")
for group in $allowed; do expand "$group"; done | sort -u >"$WORK/allowed"
for group in $denied; do expand "$group"; done | sort -u >"$WORK/denied"
comm -23 "$WORK/allowed" "$WORK/denied" >"$WORK/permitted"

port=$(( 20000 + RANDOM % 20000 ))
mkdir -p "$WORK/drop"
cat >"$WORK/config.toml" <<EOF
[watch]
dir = "$WORK/drop"
settle_ms = 200
rescan_s = 1
[state]
dir = "$WORK/state"
[sink]
kind = "file"
dir = "$WORK/state/outbox"
[metrics]
listen = "127.0.0.1:$port"
[[import]]
name = "news"
pattern = "^pr-.*$"
date_format = "dd/MM/yyyy HH:mm:ss"
timezone = "Europe/Paris"
separator = ";"
default_purpose = "email_global"
EOF
{
    echo "email;purpose;date;origin"
    for i in $(seq 1 20); do echo "u$i@example.com;newsletter;01/06/2020 21:28:$((i + 10));203.0.113.$i"; done
    echo "not-an-email;newsletter;01/06/2020 21:28:00;203.0.113.1"
} >"$WORK/pr-check.csv"
# One file found by the start-up scan, one arriving by rename later.
cp "$WORK/pr-check.csv" "$WORK/drop/pr-before.csv"

# As root, run it as `nobody`, like the service's own user: SQLite, for one,
# fchowns its files only when it runs as root.
run_as=()
if [ "$(id -u)" = 0 ]; then
    chmod 755 "$WORK"
    chown -R nobody "$WORK/drop"
    mkdir -p "$WORK/state" && chown nobody "$WORK/state"
    run_as=(-u nobody)
fi
strace -f -c "${run_as[@]}" -o "$WORK/strace.txt" "$BIN" run -c "$WORK/config.toml" >"$WORK/daemon.log" 2>&1 </dev/null &
STRACE_PID=$!
# The daemon: strace's child, once it has exec'd the binary.
for _ in $(seq 1 100); do
    child=$(awk '{print $1}' "/proc/$STRACE_PID/task/$STRACE_PID/children" 2>/dev/null || true)
    if [ -n "$child" ] && [ "$(readlink "/proc/$child/exe" 2>/dev/null)" = "$BIN" ]; then
        DAEMON_PID=$child
        break
    fi
    sleep 0.1
done
[ -n "$DAEMON_PID" ] || { cat "$WORK/daemon.log" >&2; fail "the daemon did not start under strace"; }

scrape() {
    local answer
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf 'GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n' "$1" >&3
    answer=$(cat <&3)
    exec 3<&-
    printf '%s' "$answer"
}
archived() { find "$WORK/state/archive" -name '*.report.json' 2>/dev/null | wc -l; }

for _ in $(seq 1 300); do
    [ "$(archived)" -ge 1 ] && break
    sleep 0.1
done
sed 's/@example.com/@example.org/' "$WORK/pr-check.csv" >"$WORK/drop/.pr-after.tmp"
mv "$WORK/drop/.pr-after.tmp" "$WORK/drop/pr-after.csv"
for _ in $(seq 1 300); do
    [ "$(archived)" -ge 2 ] && break
    sleep 0.1
done
[ "$(archived)" -ge 2 ] || { cat "$WORK/daemon.log" >&2; fail "the daemon did not archive the two files"; }
# A report is in archive/ before the file's outcome is in the journal (the
# move comes first), and the counter follows the journal: poll for it.
for _ in $(seq 1 300); do
    metrics=$(scrape /metrics) || true
    grep -q '^consent_drop_files_archived_total 2$' <<<"$metrics" && break
    sleep 0.1
done
grep -q '^consent_drop_files_archived_total 2$' <<<"$metrics" ||
    { echo "$metrics" >&2; fail "/metrics does not count 2 archived files"; }
health=$(scrape /healthz) || true
grep -q '^HTTP/1.1 200 ' <<<"$health" || { echo "$health" >&2; fail "/healthz is not 200"; }
kill -TERM "$DAEMON_PID" || { cat "$WORK/daemon.log" >&2; fail "the daemon stopped before SIGTERM"; }
wait "$STRACE_PID" || { cat "$WORK/daemon.log" >&2; fail "the daemon did not stop cleanly on SIGTERM"; }
DAEMON_PID='' STRACE_PID=''

awk '$NF ~ /^[a-z0-9_]+$/ && $NF != "total" && $NF != "syscall" { print $NF }' "$WORK/strace.txt" | sort -u >"$WORK/used"
[ -s "$WORK/used" ] || fail "strace recorded no system call"
refused=$(comm -23 "$WORK/used" "$WORK/permitted")
if [ -n "$refused" ]; then
    fail "system calls the unit's SystemCallFilter= refuses: $(tr '\n' ' ' <<<"$refused")"
fi
echo "check-systemd: system calls: ok ($(wc -l <"$WORK/used") used, all allowed by SystemCallFilter=)"
