#!/usr/bin/env bash
# Installs everything the tests need (idempotent) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# The NAT-lab tests (tests/test_natlab_*.py) build network namespaces with `ip` and `iptables`;
# the browser tests (tests/test_api_browser.py) drive a headless `chromium`. As root on
# Debian/Ubuntu, install whichever is missing; otherwise those tests skip and say why (or fail,
# under OVERLAY_REQUIRE_NATLAB=1).
export PATH="$PATH:/usr/sbin:/sbin"
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if ! log=$( (export DEBIAN_FRONTEND=noninteractive
               apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}") 2>&1); then
    printf '%s\n' "$log" >&2
    echo "scripts/test.sh: could not install ${missing[*]}; the tests that need them will not run" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
