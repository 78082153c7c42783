#!/bin/sh
# Installs the system packages the opt-in SFTP end-to-end test needs
# (tests/sftp.rs): OpenSSH's server and client, rsync, and a curl built with
# SFTP support (Debian's curl uses libssh2); and fuse3 (fusermount3) for the
# power-cut file system of tests/powercut.rs. Idempotent; run as root.
set -eu

packages="openssh-server openssh-client rsync curl fuse3"

missing=""
for package in $packages; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done

if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing
fi

# sshd's privilege separation directory.
mkdir -p /run/sshd
chmod 0755 /run/sshd

if ! curl -V | grep -i '^Protocols:' | grep -qw sftp; then
    echo "install-test-deps: this curl has no sftp protocol support" >&2
    exit 1
fi
if [ ! -e /dev/fuse ]; then
    echo "install-test-deps: no /dev/fuse: the power-cut tests cannot mount their file system" >&2
    exit 1
fi
for tool in /usr/sbin/sshd ssh sftp ssh-keygen rsync curl fusermount3; do
    command -v "$tool" >/dev/null || { echo "install-test-deps: $tool missing" >&2; exit 1; }
done
echo "install-test-deps: openssh-server, openssh-client, rsync, curl (sftp) and fuse3 are ready"
