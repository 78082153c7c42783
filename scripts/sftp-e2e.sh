#!/bin/sh
# The opt-in end-to-end test with real SFTP clients (tests/sftp.rs):
# installs sshd, ssh/sftp, rsync and curl when run as root, then runs the
# test with CONSENT_DROP_REQUIRE_SFTP=1 so missing tools fail it instead of
# skipping it. Extra arguments go to the test binary (a test name filter,
# --skip NAME, --test-threads=1, ...).
#
# Longer run: CONSENT_DROP_SFTP_ROWS=20000 CONSENT_DROP_SFTP_SLOW_ROWS=6000 \
#             CONSENT_DROP_SFTP_RATE=20k scripts/sftp-e2e.sh
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
    scripts/install-test-deps.sh
elif command -v sudo >/dev/null 2>&1; then
    sudo scripts/install-test-deps.sh
fi

CONSENT_DROP_REQUIRE_SFTP=1 exec cargo test --test sftp -- --ignored --nocapture "$@"
