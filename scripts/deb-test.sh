#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and tries it on this machine:
# install, files and user, `consent-drop --version`, an edited config that
# survives a reinstall and an upgrade, remove, purge. Needs root and dpkg;
# cargo-deb from `cargo install cargo-deb --locked`.
#
# It changes this machine while it runs, and puts it back: it refuses to run
# where consent-drop is already installed (DEB_TEST_REPLACE=1 removes that
# one first); a `sftp` group or `consent-drop` user it had to create is
# deleted at the end.
#
# Usage: scripts/deb-test.sh            (builds the release binary)
#        DEB_NO_BUILD=1 scripts/deb-test.sh   (packages target/release as it is)
set -euo pipefail

cd "$(dirname "$0")/.."
PKG=consent-drop
CONFIG=/etc/consent-drop/consent-drop.toml
UNIT=/lib/systemd/system/consent-drop.service

fail() { echo "deb-test: FAIL: $*" >&2; exit 1; }
step() { echo "deb-test: $*"; }

[ "$(id -u)" = 0 ] || fail "run as root (it installs the package)"
command -v dpkg >/dev/null || fail "dpkg is missing"
cargo deb --version >/dev/null 2>&1 || fail "cargo-deb is missing: cargo install cargo-deb --locked"

if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q 'installed'; then
    [ "${DEB_TEST_REPLACE:-0}" = 1 ] || fail "$PKG is already installed here; DEB_TEST_REPLACE=1 to remove it first"
    dpkg --purge "$PKG" >/dev/null
fi

created_group=0 created_user=0 WORK=''
getent passwd consent-drop >/dev/null || created_user=1
cleanup() {
    status=$?
    if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q 'installed\|config-files'; then
        dpkg --purge "$PKG" >/dev/null 2>&1 || true
    fi
    if [ "$created_user" = 1 ] && getent passwd consent-drop >/dev/null; then
        deluser --quiet --system consent-drop >/dev/null 2>&1 || true
        if getent group consent-drop >/dev/null; then
            delgroup --quiet --system consent-drop >/dev/null 2>&1 || true
        fi
    fi
    if [ "$created_group" = 1 ]; then groupdel sftp 2>/dev/null || true; fi
    [ -n "$WORK" ] && rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT
WORK=$(mktemp -d)

# The SFTP users' group, so that postinst's "added to sftp if it exists" is tried.
if ! getent group sftp >/dev/null; then
    groupadd --system sftp
    created_group=1
fi

# Build ---------------------------------------------------------------------
start=$(date +%s)
build_args=()
[ "${DEB_NO_BUILD:-0}" = 1 ] && build_args=(--no-build)
DEB=$(cargo deb --fast "${build_args[@]}" --output "$WORK/first.deb" | tail -n1)
[ -f "$DEB" ] || fail "cargo deb did not make a package"
DEB2=$(cargo deb --fast --no-build --deb-revision 2 --output "$WORK/second.deb" | tail -n1)
[ -f "$DEB2" ] || fail "cargo deb did not make the second package"
step "built $(basename "$DEB") and revision 2 in $(( $(date +%s) - start ))s"

dpkg-deb --field "$DEB" Package Version Depends | sed 's/^/deb-test:   /'
# (Whole outputs first: `grep -q` in a pipe would cut it, and pipefail fail.)
control=$(dpkg-deb --ctrl-tarfile "$DEB" | tar -t)
conffiles=$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles)
grep -qx "$CONFIG" <<<"$conffiles" || fail "$CONFIG is not a conffile"
for script in postinst prerm postrm; do
    grep -qx "./$script" <<<"$control" || fail "no $script in the package"
done

# Install -------------------------------------------------------------------
step "dpkg -i"
dpkg -i "$DEB" >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log" >&2; fail "dpkg -i"; }
[ "$(dpkg-query -W -f='${Status}' "$PKG")" = 'install ok installed' ] || fail "not installed"

[ -x /usr/bin/consent-drop ] || fail "/usr/bin/consent-drop"
[ -f "$UNIT" ] || fail "$UNIT"
[ -f /usr/share/doc/consent-drop/README.md ] || fail "/usr/share/doc/consent-drop/README.md"
for shipped in consent-drop.rules.yml consent-drop.rules.test.yml consent-drop.dashboard.json; do
    cmp -s "/usr/share/doc/consent-drop/monitoring/$shipped" "monitoring/$shipped" ||
        fail "/usr/share/doc/consent-drop/monitoring/$shipped is not monitoring/$shipped"
done
[ -f "$CONFIG" ] || fail "$CONFIG"
cmp -s "$CONFIG" config/example.toml || fail "$CONFIG is not config/example.toml"
[ "$(stat -c '%U:%G %a' "$CONFIG")" = "root:consent-drop 640" ] ||
    fail "$CONFIG is $(stat -c '%U:%G %a' "$CONFIG"), not root:consent-drop 640"
[ "$(stat -c '%U:%G %a' /etc/consent-drop)" = "root:consent-drop 750" ] ||
    fail "/etc/consent-drop is $(stat -c '%U:%G %a' /etc/consent-drop)"

entry=$(getent passwd consent-drop) || fail "no consent-drop user"
uid=$(cut -d: -f3 <<<"$entry")
[ "$uid" -lt 1000 ] || fail "consent-drop is not a system user (uid $uid)"
[ "$(cut -d: -f7 <<<"$entry")" = /usr/sbin/nologin ] || fail "consent-drop can log in: $entry"
getent group consent-drop >/dev/null || fail "no consent-drop group"
groups=$(id -nG consent-drop)
[[ " $groups " == *" sftp "* ]] || fail "consent-drop is not in the sftp group: $groups"

if [ -d /run/systemd/system ]; then
    step "systemd is running here: the service was started"
else
    # Enabled for the next boot, not started.
    [ -L /etc/systemd/system/multi-user.target.wants/consent-drop.service ] || fail "the unit is not enabled"
    if pgrep -u consent-drop >/dev/null; then fail "the service was started on a machine without systemd"; fi
    step "no systemd running: the unit is enabled, nothing was started"
fi

version=$(/usr/bin/consent-drop --version)
expected="consent-drop $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
[ "$version" = "$expected" ] || fail "--version says '$version', not '$expected'"
step "/usr/bin/consent-drop --version: $version"
# The installed binary runs as its user and reads the installed config.
if command -v setpriv >/dev/null; then
    setpriv --reuid=consent-drop --regid=consent-drop --init-groups \
        /usr/bin/consent-drop check -c "$CONFIG" >"$WORK/check.log" 2>&1 || true
    if grep -qi 'permission denied' "$WORK/check.log"; then
        cat "$WORK/check.log" >&2
        fail "the consent-drop user cannot read $CONFIG"
    fi
fi

# An edited config survives a reinstall and an upgrade ----------------------
mark="# edited by deb-test $$"
echo "$mark" >>"$CONFIG"
step "dpkg -i again (same version), then revision 2"
dpkg -i "$DEB" >"$WORK/reinstall.log" 2>&1 </dev/null || { cat "$WORK/reinstall.log" >&2; fail "reinstall"; }
[ "$(tail -n1 "$CONFIG")" = "$mark" ] || fail "the reinstall overwrote the edited config"
dpkg -i "$DEB2" >"$WORK/upgrade.log" 2>&1 </dev/null || { cat "$WORK/upgrade.log" >&2; fail "upgrade"; }
[ "$(tail -n1 "$CONFIG")" = "$mark" ] || fail "the upgrade overwrote the edited config"
[[ "$(dpkg-query -W -f='${Version}' "$PKG")" == *-2 ]] || fail "revision 2 not installed"
step "the edited config survived both"

# Remove, then purge --------------------------------------------------------
step "dpkg -r"
dpkg -r "$PKG" >"$WORK/remove.log" 2>&1 || { cat "$WORK/remove.log" >&2; fail "dpkg -r"; }
[ ! -e /usr/bin/consent-drop ] || fail "/usr/bin/consent-drop is left after dpkg -r"
[ ! -e "$UNIT" ] || fail "$UNIT is left after dpkg -r"
[ "$(tail -n1 "$CONFIG")" = "$mark" ] || fail "dpkg -r must keep the edited config"
getent passwd consent-drop >/dev/null || fail "dpkg -r must keep the user (it owns the state folder)"
step "dpkg --purge"
dpkg --purge "$PKG" >"$WORK/purge.log" 2>&1 || { cat "$WORK/purge.log" >&2; fail "dpkg --purge"; }
[ ! -e "$CONFIG" ] || fail "$CONFIG is left after purge"
[ ! -e /etc/systemd/system/multi-user.target.wants/consent-drop.service ] || fail "the enable symlink is left after purge"
step "ok in $(( $(date +%s) - start ))s"
