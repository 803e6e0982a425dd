#!/usr/bin/env bash
# Make sure a PostgreSQL server runs on 127.0.0.1:5432 with a database
# `test` that the local `postgres` role reaches without a password, then
# print its URL: the only thing written to stdout, so
# `KYCD_TEST_POSTGRES_URL=$(.ci/postgres.sh)` works. The PostgreSQL tests
# (crates/kycd-log/tests/postgres_*.rs, crates/kycd/tests/cluster.rs) make
# a schema of their own per check in it.
#
# - A server already answering is used as it is.
# - Else Debian's cluster is started (pg_ctlcluster), installing Debian's
#   `postgresql` package first if it is missing; local connections over
#   TCP are then trusted for the test database only.
# - Exits non-zero, saying why, when no server answers afterwards: CI must
#   fail rather than skip the PostgreSQL tests.
set -euo pipefail

host=127.0.0.1
port=5432
db=test
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
else
    SUDO=(sudo)
fi

ready() {
    pg_isready -q -h "$host" -p "$port" 2>/dev/null
}

if ! command -v pg_isready >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "== installing PostgreSQL (Debian's postgresql package)" >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends postgresql >&2
fi

if ! ready; then
    # The newest installed cluster (one is made by the package).
    cluster=$(pg_lsclusters --no-header 2>/dev/null | sort -k1,1V | tail -n 1 || true)
    if [ -z "$cluster" ]; then
        echo "error: PostgreSQL is installed but has no cluster to start (pg_lsclusters is empty)" >&2
        exit 1
    fi
    read -r version name _ <<<"$cluster"
    echo "== starting PostgreSQL cluster $version/$name" >&2
    "${SUDO[@]}" pg_ctlcluster "$version" "$name" start >&2 || true
    for _ in $(seq 1 60); do
        ready && break
        sleep 0.5
    done
fi

if ! ready; then
    echo "error: no PostgreSQL server answers on $host:$port (the PostgreSQL tests need one)" >&2
    exit 1
fi

psql_as_postgres() {
    # Over TCP first (trust auth, as on the development machines), else
    # over the socket as the postgres system user.
    if psql -h "$host" -p "$port" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
        psql -h "$host" -p "$port" -U postgres -d postgres -Atq "$@"
    else
        "${SUDO[@]}" -u postgres psql -p "$port" -d postgres -Atq "$@"
    fi
}

if ! psql -h "$host" -p "$port" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
    # A fresh Debian cluster asks for a password over TCP: trust the local
    # address, which is all the tests use.
    hba=$(psql_as_postgres -c 'SHOW hba_file')
    echo "== trusting $host in $hba for the tests" >&2
    printf 'host all all 127.0.0.1/32 trust\n' | "${SUDO[@]}" sh -c "cat - '$hba' > '$hba.new' && mv '$hba.new' '$hba'"
    psql_as_postgres -c 'SELECT pg_reload_conf()' >/dev/null
fi

if [ "$(psql -h "$host" -p "$port" -U postgres -d postgres -Atqc "SELECT count(*) FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    echo "== creating database $db" >&2
    psql -h "$host" -p "$port" -U postgres -d postgres -qc "CREATE DATABASE $db" >&2
fi

version=$(psql -h "$host" -p "$port" -U postgres -d "$db" -Atqc 'SHOW server_version')
echo "== PostgreSQL $version on $host:$port, database $db" >&2
echo "postgres://postgres@$host:$port/$db"
