#!/usr/bin/env bash
# Makes the model servers' own Python environment, and is quick when it is already made.
# DEEPaaS's pins (marshmallow 3, webargs 5, aiohttp 3.14) conflict with the platform's venv,
# so models run from a venv of their own: Debian's Python, models/requirements.txt (every
# package pinned, installed with --no-deps), then the example models of models/.
#   scripts/model-env.sh [ENV]      ENV defaults to /var/cache/officina/model-env
# Prints the path of ENV/bin/deepaas-run; progress goes to standard error.
set -euo pipefail
cd "$(dirname "$0")/.."
env_dir="${1:-/var/cache/officina/model-env}"
requirements=models/requirements.txt
packages=(models/officina_digits)
stamp="$env_dir/.officina-model-env"
say() { echo "model-env.sh: $*" >&2; }

# What the env is made of. A change of interpreter or pins remakes it from nothing; a change
# in a model package's sources reinstalls that package only.
requirements_hash=$({ /usr/bin/python3 -VV; cat "$requirements"; } | sha256sum | cut -d' ' -f1)
packages_hash=$(find "${packages[@]}" -type f ! -path '*/__pycache__/*' ! -path '*/build/*' \
  ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)

mkdir -p "$(dirname "$env_dir")"
# One maker at a time (install.sh and a test run may both ask).
exec 9>"$env_dir.lock"
flock 9

if [ -x "$env_dir/bin/deepaas-run" ] && [ -f "$stamp" ] \
  && [ "$(cat "$stamp")" = "requirements $requirements_hash packages $packages_hash" ]; then
  echo "$env_dir/bin/deepaas-run"
  exit 0
fi

if [ ! -f "$stamp" ] || ! grep -q "^requirements $requirements_hash " "$stamp"; then
  if [ -e "$env_dir" ]; then
    # Remove only what is a venv: a mistyped path must not cost someone a folder.
    if [ ! -f "$env_dir/pyvenv.cfg" ]; then
      say "$env_dir exists and is not a Python venv: not touching it" && exit 1
    fi
    say "remaking $env_dir (its interpreter or pins changed)"
    rm -rf "$env_dir"
  else
    say "making $env_dir (about a minute, 1.8 GB)"
  fi
  # Debian's Python, not a per-account one: model servers may run as other accounts.
  /usr/bin/python3 -m venv "$env_dir"
  "$env_dir/bin/python" -m pip install -q --upgrade pip
  "$env_dir/bin/python" -m pip install -q --no-deps -r "$requirements"
  echo "requirements $requirements_hash packages none" > "$stamp"
fi

# Built from a copy: building in place would leave build/ and *.egg-info in the repository.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for package in "${packages[@]}"; do
  cp -r "$package" "$work/"
  say "installing $(basename "$package")"
  "$env_dir/bin/python" -m pip install -q --no-deps --force-reinstall "$work/$(basename "$package")"
done
"$env_dir/bin/python" -m pip check >&2
echo "requirements $requirements_hash packages $packages_hash" > "$stamp.new"
mv "$stamp.new" "$stamp"
echo "$env_dir/bin/deepaas-run"
