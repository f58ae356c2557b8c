#!/usr/bin/env bash
# Installs everything the tests need (idempotent) and runs the whole suite, or one layer of it:
#   bash scripts/test.sh [unit|loopback|natlab|interop|fuzz] [pytest arguments...]
#   unit      the cores without I/O (needs only the cores' dependencies)
#   loopback  real nodes, in this process or as processes, and hosts on 127.0.0.1
#   natlab    network namespaces with NATs between them (needs root, `ip` and `iptables`)
#   interop   our codecs against independent implementations (py-libp2p, aioice)
#   fuzz      each decoder's fuzz harness, coverage-guided (atheris) for a fixed number of runs
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

layer=
case "${1:-}" in
  unit|loopback|natlab|interop|fuzz) layer=$1; shift ;;
esac

# The NAT-lab tests (tests/natlab) build network namespaces with `ip` and `iptables`, and build a
# real IGD for its routers (miniupnpd, from source: the tools below); the browser
# tests (tests/loopback/test_api_browser.py) drive a headless `chromium`. As root on Debian/Ubuntu,
# install whichever the chosen tests need and is missing; otherwise those tests skip and say why
# (or fail, under OVERLAY_REQUIRE_NATLAB=1).
export PATH="$PATH:/usr/sbin:/sbin"
missing=()
if [ -z "$layer" ] || [ "$layer" = natlab ]; then
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  command -v conntrack >/dev/null 2>&1 || missing+=(conntrack)  # a router's reboot: its flows forgotten
  # the lab's IGD: miniupnpd built from Debian's source package (simulations/natlab/igd.py)
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
  command -v dpkg-source >/dev/null 2>&1 || missing+=(dpkg-dev)
  command -v make >/dev/null 2>&1 && command -v cc >/dev/null 2>&1 || missing+=(build-essential)
  pkg-config --exists libnftnl libmnl 2>/dev/null || missing+=(pkg-config libnftnl-dev libmnl-dev)
fi
if [ -z "$layer" ] || [ "$layer" = loopback ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi
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
exec .venv/bin/python -m pytest ${layer:+"tests/$layer"} "$@"
