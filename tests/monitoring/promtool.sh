#!/usr/bin/env bash
# Prints the path of promtool for tests/monitoring.rs: the one on PATH (Debian's prometheus
# package ships it), else the one extracted from that package into a cache outside the repo,
# keyed by the package version. Only the .deb's files are unpacked (`apt-get download` +
# `dpkg-deb -x`): nothing is installed and no Prometheus service is started.
#   --from-package   ignore PATH (to exercise the extraction)
#   INPLACE_K8S_CACHE  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/inplace-upgrade)
set -euo pipefail

if [[ ${1:-} != --from-package ]] && command -v promtool >/dev/null; then
  command -v promtool
  exit 0
fi
root=${INPLACE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inplace-upgrade}
version=$(apt-cache policy prometheus 2>/dev/null | awk '$1 == "Candidate:" { print $2 }')
if [[ -z $version || $version == "(none)" ]]; then
  apt-get update -qq >&2
  version=$(apt-cache policy prometheus | awk '$1 == "Candidate:" { print $2 }')
fi
[[ -n $version && $version != "(none)" ]] || { echo "promtool.sh: no prometheus package in the apt sources" >&2; exit 1; }
dir="$root/prometheus-${version//[^A-Za-z0-9.+-]/_}"
if [[ -x $dir/usr/bin/promtool ]]; then echo "$dir/usr/bin/promtool"; exit 0; fi
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [[ ! -x $dir/usr/bin/promtool ]]; then
  work=$(mktemp -d)
  chmod 755 "$work" # apt downloads as _apt
  trap 'rm -rf "$work"' EXIT
  echo "promtool.sh: extracting promtool from prometheus $version" >&2
  (cd "$work" && apt-get download -q "prometheus=$version" >&2)
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  mkdir -p "$dir/usr/bin"
  cp "$work/root/usr/bin/promtool" "$dir/usr/bin/promtool.tmp"
  mv "$dir/usr/bin/promtool.tmp" "$dir/usr/bin/promtool"
fi
echo "$dir/usr/bin/promtool"
