#!/usr/bin/env bash
# `cargo deny check` (advisories, licences, bans, sources; policy in
# deny.toml) with a pinned cargo-deny, installed from crates.io when missing.
#
# The RustSec advisory database is a git repository on GitHub:
# - KYCD_ADVISORY_DB unset: cargo-deny fetches it itself (needs GitHub);
# - KYCD_ADVISORY_DB=/path/to/a/git/copy/of/rustsec/advisory-db (a clone or
#   a bare mirror): it is cloned (locally, no network) into cargo-deny's
#   database directory and the check runs with --offline, after
#   `cargo fetch --locked` has brought every crate's source from crates.io.
# Either way all four checks run; the database's newest commit is printed
# so that an old copy is seen. Refresh a copy where GitHub is reachable:
#   git -C "$KYCD_ADVISORY_DB" fetch https://github.com/rustsec/advisory-db main
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $version"; then
    echo "== installing cargo-deny $version (crates.io)"
    cargo install --locked cargo-deny --version "$version"
fi
cargo deny --version

# Arguments, if any, name the checks to run (default: all four).
if [ -z "${KYCD_ADVISORY_DB:-}" ]; then
    exec cargo deny --locked check "$@"
fi

if ! git -C "$KYCD_ADVISORY_DB" rev-parse --verify --quiet HEAD >/dev/null; then
    echo "error: KYCD_ADVISORY_DB=$KYCD_ADVISORY_DB is not a git copy of rustsec/advisory-db" >&2
    exit 1
fi
# cargo-deny $version keeps the database for its default URL
# (https://github.com/rustsec/advisory-db) in this directory.
db="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/advisory-db-3157b0e258782691"
mkdir -p "$(dirname "$db")"
rm -rf "$db.new"
git clone --quiet "$KYCD_ADVISORY_DB" "$db.new"
rm -rf "$db"
mv "$db.new" "$db"
echo "advisory database: $(git -C "$db" log -1 --format='%H of %cI')" \
    "($(git -C "$db" ls-files 'crates/*/RUSTSEC-*.md' | wc -l) advisories)"

cargo fetch --locked
exec cargo deny --offline check "$@"
