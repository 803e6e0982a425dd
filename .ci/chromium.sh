#!/usr/bin/env bash
# Install headless Chromium and its WebDriver from Debian's packages
# (`chromium`, `chromium-driver`: /usr/bin/chromium, /usr/bin/chromedriver)
# for the console's real-browser test, unless chromedriver is already there,
# then check both run. Exits non-zero when either is missing afterwards.
set -euo pipefail

if [ ! -x /usr/bin/chromedriver ] || [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    else
        SUDO=(sudo)
    fi
    echo "== installing chromium and chromium-driver (apt)"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends chromium chromium-driver
fi

/usr/bin/chromedriver --version
/usr/bin/chromium --version
