#!/usr/bin/env bash
# Makes the Debian 13 (trixie) root that Officina's embedded HTCondor pool runs in:
#   scripts/condor-root.sh <dir>
# Debian 12 has no HTCondor; trixie's `minicondor` is a one-node pool. The root is made with
# debootstrap from the Debian mirror this machine's apt already uses, and nothing else is
# fetched from the network. Idempotent and cache-friendly: a root that has condor_master is
# left as it is; a half-made one (killed midway) is made again from nothing.
set -euo pipefail

root=${1:?usage: condor-root.sh <dir>}
root=$(realpath -m "$root")
if [ -x "$root/usr/sbin/condor_master" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "condor-root.sh: must run as root (debootstrap and chroot)" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  echo "condor-root.sh: debootstrap is missing: apt-get install debootstrap" >&2
  exit 1
fi
if [ -e "$root" ] && [ -n "$(ls -A "$root" 2>/dev/null)" ]; then
  echo "condor-root.sh: $root exists, is not empty and has no condor_master; remove it first" >&2
  exit 1
fi

# The Debian archive that apt uses for this host's own release (the entry whose suite is the
# host's codename, so not -security, -updates, nor a third-party repository), from one-line
# (.list) or deb822 (.sources) files; disabled files do not count.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
debian_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v rel="$codename" '$1 == "deb" {
           i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
           if ($(i+1) == rel) { print $i; exit }
         }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # Stanzas are separated by blank lines.
    awk -v rel="$codename" 'BEGIN { RS = ""; FS = "\n" }
         {
           uri = ""; ours = 0; deb = 0
           for (i = 1; i <= NF; i++) {
             if ($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) deb = 1
             if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri = a[2] }
             if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == rel) ours = 1 }
             if ($i ~ /^Enabled:[ \t]*no/) deb = 0
           }
           if (deb && ours && uri != "") { print uri; exit }
         }' "$f"
  done
}
mirror=$(debian_mirror | head -n 1)
if [ -z "$mirror" ]; then
  echo "condor-root.sh: no Debian archive for '$codename' found in /etc/apt/sources.list*" >&2
  exit 1
fi

work="$root.partial"
cleanup() {
  # Never leave a mount behind, whatever failed.
  for m in "$work/proc" "$work/dev/pts" "$work/dev"; do
    if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
  done
}
trap cleanup EXIT
cleanup
rm -rf --one-file-system "$work"
mkdir -p "$work"

echo "condor-root.sh: debootstrap trixie from $mirror into $work" >&2
debootstrap --variant=minbase trixie "$work" "$mirror" >"$work.log" 2>&1 || {
  tail -n 20 "$work.log" >&2
  exit 1
}

# Services are never started by package scripts inside the root: Officina starts the pool.
printf '#!/bin/sh\nexit 101\n' >"$work/usr/sbin/policy-rc.d"
chmod 0755 "$work/usr/sbin/policy-rc.d"
printf 'deb %s trixie main\n' "$mirror" >"$work/etc/apt/sources.list"
rm -f "$work/etc/apt/sources.list.d/"*
cp -L /etc/resolv.conf "$work/etc/resolv.conf"

mount -t proc proc "$work/proc"
mount --bind /dev "$work/dev"
mount --bind /dev/pts "$work/dev/pts"
in_root() { chroot "$work" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }
echo "condor-root.sh: apt-get install minicondor in the root" >&2
{
  in_root apt-get update -qq &&
    in_root apt-get install -y -qq --no-install-recommends minicondor &&
    in_root apt-get clean
} >>"$work.log" 2>&1 || {
  tail -n 20 "$work.log" >&2
  exit 1
}
cleanup
# The package's own local configuration is replaced by Officina's at each start.
if [ ! -x "$work/usr/sbin/condor_master" ]; then
  echo "condor-root.sh: minicondor installed but condor_master is missing" >&2
  exit 1
fi
rm -f "$work.log"
rm -rf --one-file-system "$root"
mv "$work" "$root"
echo "condor-root.sh: ready: $root" >&2
