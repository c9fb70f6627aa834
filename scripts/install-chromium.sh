#!/usr/bin/env bash
# Installs Debian's Chromium, as root, for the console's browser tests (Playwright drives it; no
# browser is downloaded by a test tool). Does nothing when it is there already.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
chromium --version
