#!/usr/bin/env bash
# CI: build the Debian package, install it into this machine with dpkg -i,
# check what it installed from the installed files (the binary, the user,
# the modes, `kycd config check` and a short `kycd serve` as the kycd user,
# the unit under `systemd-analyze verify`), upgrade it over itself (the
# conffiles keep an edit), purge it (the data directory is kept) and clean
# up what this run created. Any failure stops the script non-zero.
#
# Why the machine and not `dpkg --root` into a scratch directory: dpkg
# chroots into that root to run the maintainer scripts, which then need a
# whole Debian system there (sh, getent, useradd, chown); CI runs as root
# on a machine it throws away, and the script removes what it added
# (package, user, group, /var/lib/kycd), so a developer's machine is left
# as it was. It refuses to touch a machine where kycd was installed by
# something else.
#
# The package holds the dev-profile binary of the tests' own build
# (`cargo test --workspace --locked --no-run`, nothing to do right after
# the test section), stripped by cargo-deb, so CI checks the packaging
# without a release build (20+ minutes here). Its assets, scripts and
# unit are the release package's; `cargo deb -p kycd` builds that one.
#
# KYCD_CARGO_DEB_VERSION pins cargo-deb (installed from crates.io when
# missing or another version).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $CARGO_TARGET_DIR in
/*) ;;
*) CARGO_TARGET_DIR=$root/$CARGO_TARGET_DIR ;;
esac
export CARGO_TARGET_DIR
cargo_deb_version=${KYCD_CARGO_DEB_VERSION:-3.8.0}

fail() {
    echo "error: package: $*" >&2
    exit 1
}

if [ "$(id -u)" != 0 ]; then
    fail "installs a package and a system user: run as root (CI does)"
fi

if [ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb $cargo_deb_version" ]; then
    echo "installing cargo-deb $cargo_deb_version"
    cargo install --locked cargo-deb --version "$cargo_deb_version"
fi
if ! command -v systemd-analyze >/dev/null || ! command -v strip >/dev/null; then
    echo "installing systemd (for systemd-analyze) and binutils (strip) from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd binutils
fi

# The package must not clobber a kycd this script did not install.
marker=$CARGO_TARGET_DIR/debian/.installed-by-ci-package
if dpkg-query -W -f='${Status}' kycd 2>/dev/null | grep -q 'installed'; then
    [ -e "$marker" ] || fail "kycd is installed on this machine and not by this script: not touching it"
    echo "purging the kycd an interrupted run of this script left installed"
    dpkg --purge kycd
fi
created_user=no
created_dir=no
if [ -e "$marker" ]; then
    # shellcheck disable=SC1090
    . "$marker"
else
    getent passwd kycd >/dev/null || created_user=yes
    [ -e /var/lib/kycd ] || created_dir=yes
fi
if [ -e /var/lib/kycd ] && [ "$created_dir" = no ]; then
    fail "/var/lib/kycd exists already (a real kycd's data?): not touching it"
fi

server_pid=
cleanup() {
    status=$?
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if dpkg-query -W -f='${Status}' kycd 2>/dev/null | grep -q 'installed'; then
        dpkg --purge kycd >/dev/null 2>&1 || true
    fi
    if [ "$created_dir" = yes ]; then rm -rf /var/lib/kycd; fi
    if [ "$created_user" = yes ] && getent passwd kycd >/dev/null; then
        userdel kycd || true
    fi
    if getent group kycd >/dev/null && [ "$created_user" = yes ]; then
        groupdel kycd 2>/dev/null || true
    fi
    rm -f "$marker"
    exit "$status"
}
trap cleanup EXIT

echo "building (the tests' build: nothing to do right after them)"
cargo test --workspace --locked --no-run --quiet
rm -f "$CARGO_TARGET_DIR"/debian/kycd_*.deb
# --profile dev draws a warning from cargo-deb: dev builds are not what it
# is for, and this package is not what ships.
deb=$(cargo deb -p kycd --no-build --profile dev --fast --quiet 2>/dev/null | tail -n 1)
[ -f "$deb" ] || deb=$(ls "$CARGO_TARGET_DIR"/debian/kycd_*.deb)
echo "built $deb ($(du -h "$deb" | cut -f1))"
mkdir -p "$(dirname "$marker")"
printf 'created_user=%s\ncreated_dir=%s\n' "$created_user" "$created_dir" >"$marker"

echo "dpkg -i"
dpkg -i "$deb"
dpkg-query -W -f='${Status}\n' kycd | grep -qx 'install ok installed' || fail "kycd is not installed"

# owner:group mode of a path, or fail.
expect_stat() {
    local got
    got=$(stat -c '%U:%G %a' "$1") || fail "$1 is missing"
    [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
}

check_installed() {
    [ -x /usr/bin/kycd ] || fail "/usr/bin/kycd is missing"
    /usr/bin/kycd --version
    getent group kycd >/dev/null || fail "no kycd group"
    local entry uid shell home
    entry=$(getent passwd kycd) || fail "no kycd user"
    uid=$(echo "$entry" | cut -d: -f3)
    home=$(echo "$entry" | cut -d: -f6)
    shell=$(echo "$entry" | cut -d: -f7)
    [ "$uid" -lt 1000 ] || fail "kycd is not a system user (uid $uid)"
    [ "$home" = /var/lib/kycd ] || fail "kycd's home is $home"
    [ "$shell" = /usr/sbin/nologin ] || fail "kycd's shell is $shell"
    [ "$(id -gn kycd)" = kycd ] || fail "kycd's group is $(id -gn kycd)"
    expect_stat /var/lib/kycd "kycd:kycd 750"
    expect_stat /etc/kycd/kycd.toml "root:kycd 640"
    expect_stat /etc/kycd/kycd.env "root:kycd 640"
    expect_stat /lib/systemd/system/kycd.service "root:root 644"
    expect_stat /usr/share/doc/kycd/README.md "root:root 644"
    expect_stat /usr/share/doc/kycd/LICENSE "root:root 644"
    local conffiles
    conffiles=$(dpkg-query -W -f='${Conffiles}\n' kycd)
    for f in /etc/kycd/kycd.toml /etc/kycd/kycd.env; do
        echo "$conffiles" | grep -q " $f " || fail "$f is not a conffile"
    done
}

# Run as the kycd user with its groups, as systemd's User= does; setpriv
# execs (runuser would stay as a parent that turns SIGTERM into an error).
as_kycd() {
    setpriv --reuid=kycd --regid=kycd --init-groups -- "$@"
}

# `kycd config check` as the service runs it: the kycd user, the env file
# in the environment, the installed config.
config_check() {
    as_kycd sh -c 'set -a; . /etc/kycd/kycd.env; set +a; exec /usr/bin/kycd config check --config /etc/kycd/kycd.toml'
}

check_installed
out=$(config_check) || fail "kycd config check failed on the installed files"
echo "$out" | grep -Eq '^data_dir *= *"/var/lib/kycd"' || fail "the installed config does not put the data in /var/lib/kycd"
echo "$out" | grep -Eq '^admin_listen *= *"127.0.0.1:8081"' || fail "the installed config has no private admin listener"

echo "a secret in /etc/kycd/kycd.env reaches kycd, hidden"
echo 'KYCD_WEBHOOK_SECRETS=ci-package-secret' >>/etc/kycd/kycd.env
out=$(config_check) || fail "kycd config check failed with a secret set"
echo "$out" | grep -q 'ci-package-secret' && fail "config check printed the secret"
echo "$out" | grep -q '^# webhook_secrets = .*<hidden>.*from KYCD_WEBHOOK_SECRETS' || fail "the env file's secret did not reach kycd"

echo "kycd serve, as the kycd user, on the installed files"
log=$(mktemp)
setpriv --reuid=kycd --regid=kycd --init-groups -- sh -c 'set -a; . /etc/kycd/kycd.env; set +a; KYCD_LISTEN=127.0.0.1:0 KYCD_ADMIN_LISTEN=127.0.0.1:0 exec /usr/bin/kycd serve --config /etc/kycd/kycd.toml' >"$log" 2>&1 &
server_pid=$!
addr=
for _ in $(seq 1 300); do
    addr=$(sed -n 's|^listening on http://||p' "$log")
    [ -n "$addr" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; fail "kycd serve exited"; }
    sleep 0.1
done
[ -n "$addr" ] || { cat "$log" >&2; fail "kycd serve printed no address within 30 s"; }
curl -fsS "http://$addr/readyz" || { cat "$log" >&2; fail "/readyz is not ready"; }
echo
for f in events.db store.db audit.key; do
    [ "$(stat -c %U /var/lib/kycd/$f)" = kycd ] || fail "/var/lib/kycd/$f is not kycd's"
done
expect_stat /var/lib/kycd/audit.key "kycd:kycd 600"
# SIGTERM is the unit's stop signal: a graceful exit, status 0.
kill -TERM "$server_pid"
if ! wait "$server_pid"; then
    cat "$log" >&2
    fail "kycd serve did not exit 0 on SIGTERM"
fi
server_pid=
grep -q 'stopped' "$log" || fail "kycd serve logged no graceful stop"
rm -f "$log"

echo "systemd-analyze verify /lib/systemd/system/kycd.service"
# Verify prints warnings and still exits 0: any output fails too.
if [ -d /run/systemd/system ]; then
    echo "(systemd runs here)"
else
    echo "(systemd is not PID 1 here: verify loads the unit offline)"
fi
va=$(systemd-analyze verify /lib/systemd/system/kycd.service 2>&1) || { echo "$va" >&2; fail "systemd-analyze verify failed"; }
[ -z "$va" ] || { echo "$va" >&2; fail "systemd-analyze verify warned"; }
systemd-analyze security --offline=yes /lib/systemd/system/kycd.service 2>/dev/null | tail -n 1 || true

echo "dpkg -i again (an upgrade: conffiles keep their edits, modes hold)"
dpkg -i "$deb"
grep -qx 'KYCD_WEBHOOK_SECRETS=ci-package-secret' /etc/kycd/kycd.env || fail "the upgrade lost an edit of /etc/kycd/kycd.env"
check_installed

echo "dpkg --purge (the data directory is kept)"
dpkg --purge kycd
[ ! -e /usr/bin/kycd ] || fail "/usr/bin/kycd is still there"
[ ! -e /lib/systemd/system/kycd.service ] || fail "the unit is still there"
[ ! -e /etc/kycd ] || fail "/etc/kycd is still there after purge"
[ -f /var/lib/kycd/events.db ] || fail "purge removed the data directory"
echo "package: ok"
