#!/usr/bin/env bash
# Restart the PostgreSQL server listening on the given port (default 5432)
# and wait until it answers again: the cluster failure test
# (crates/kycd/tests/cluster.rs) runs it mid-stream through
# KYCD_TEST_POSTGRES_RESTART. Finds Debian's cluster for the port with
# pg_lsclusters; exits non-zero, saying why, if there is none or it does not
# come back.
set -euo pipefail

port=${1:-5432}
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
else
    SUDO=(sudo)
fi
cluster=$(pg_lsclusters --no-header | awk -v p="$port" '$3 == p { print $1, $2 }' | head -n 1)
if [ -z "$cluster" ]; then
    echo "error: no PostgreSQL cluster listens on port $port (pg_lsclusters)" >&2
    exit 1
fi
read -r version name <<<"$cluster"
# `fast`: open connections are cut, as when a database fails over.
"${SUDO[@]}" pg_ctlcluster "$version" "$name" restart -m fast >&2
for _ in $(seq 1 120); do
    if pg_isready -q -h 127.0.0.1 -p "$port"; then
        exit 0
    fi
    sleep 0.25
done
echo "error: PostgreSQL $version/$name did not answer on port $port after its restart" >&2
exit 1
