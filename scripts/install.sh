#!/usr/bin/env bash
# Installs everything Officina needs on a fresh Debian machine of the project's kind, and is
# quick when it is already done. `make up` and `make test` run it first.
#   scripts/install.sh          the platform (Python venv, the proxy from npm)
#   scripts/install.sh --test   the platform and what the tests need (Chromium, test packages)
set -euo pipefail
cd "$(dirname "$0")/.."
with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

apt_packages=(python3 python3-venv python3-dev passwd openjdk-17-jre-headless debootstrap)
# The data federation (hub/data): XRootD 5.5 origins, redirector and XCache, token
# authorization, the FUSE mount; openssl names the federation's CA for XRootD's clients.
apt_packages+=(xrootd-server xrootd-client xrootd-plugins xrootd-server-plugins xrootd-fuse
  xrootd-scitokens-plugins fuse3 openssl)
[ "$with_tests" = 1 ] && apt_packages+=(chromium fonts-dejavu-core)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: please install these Debian packages first (as root): ${missing[*]}" >&2
    exit 1
  fi
  echo "install.sh: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's Python, not a per-account one (pyenv under /root): sessions run as other accounts
# and must be able to execute the interpreter.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
extras=""
[ "$with_tests" = 1 ] && extras="[test]"
stamp=".venv/.installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extras}"
  touch "$stamp"
fi

if [ ! -x node_modules/.bin/configurable-http-proxy ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

# The model servers' own environment (DEEPaaS and TensorFlow, pins of their own): models/README.md.
scripts/model-env.sh >/dev/null
