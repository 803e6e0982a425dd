#!/usr/bin/env bash
# Install promtool from Debian's `prometheus` package, unless a promtool is
# already on the PATH, then check that it runs and print its path: the only
# thing written to stdout (apt's output and promtool's version go to
# stderr), so `KYCD_TEST_PROMTOOL=$(.ci/promtool.sh)` works. The metrics
# test (crates/kycd/tests/metrics_promtool.rs) pipes a live /metrics into
# `promtool check metrics`. Exits non-zero when promtool is missing
# afterwards.
#
# The package also ships the Prometheus server, whose postinst would
# enable and start it. Nothing here wants a Prometheus running, so while
# apt installs, a policy-rc.d that exits 101 ("action not allowed") keeps
# invoke-rc.d and deb-systemd-invoke from starting it; it is removed
# afterwards. One that was already there (a container image's) is left as
# it is.
set -euo pipefail

if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    else
        SUDO=(sudo)
    fi
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        # Removed on any exit, a failed install included.
        trap '"${SUDO[@]}" rm -f "$policy"' EXIT
        printf '#!/bin/sh\n# .ci/promtool.sh: start no service while it installs prometheus.\nexit 101\n' |
            "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 0755 "$policy"
    fi
    echo "== installing prometheus for promtool (apt; its service is not started)" >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends prometheus >&2
fi

promtool=$(command -v promtool) || {
    echo "error: promtool is still missing after installing prometheus" >&2
    exit 1
}
"$promtool" --version >&2
echo "$promtool"
