#!/usr/bin/env bash
# Builds Helm (helm.sh/helm/v4, the release pinned in tests/helm/go.mod) for the chart tests
# (tests/helm.rs), into a cache outside the repo keyed by that release, go.sum and the Go
# version. A warm cache makes this a no-op. Prints the bin directory.
#
#   INPLACE_K8S_CACHE  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/inplace-upgrade),
#                      the same as tests/k8s/build.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(awk '$1 == "helm.sh/helm/v4" { print $2 }' "$here/go.mod")
[[ $version =~ ^v4\.[0-9]+\.[0-9]+$ ]] || { echo "build.sh: cannot read the Helm version from $here/go.mod" >&2; exit 1; }
root=${INPLACE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inplace-upgrade}
bin="$root/helm-$version/bin"
key="$version $(sha256sum "$here/go.sum" | cut -c1-16) $(go env GOVERSION)"

warm() { [[ -f $bin/.key && $(cat "$bin/.key") == "$key" && -x $bin/helm ]]; }
if warm; then echo "$bin"; exit 0; fi

mkdir -p "$bin"
# Two harnesses meeting a cold cache must not build into the same file: the second waits,
# then finds the cache warm.
exec 9>"$bin/.lock"
flock 9
if warm; then echo "$bin"; exit 0; fi
rm -f "$bin/.key"
cd "$here"
echo "build.sh: building helm $version (cold: several minutes on 2 cores)" >&2
CGO_ENABLED=0 go build -mod=readonly -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version" \
  -o "$bin/helm.tmp" helm.sh/helm/v4/cmd/helm
mv "$bin/helm.tmp" "$bin/helm"
echo "$key" > "$bin/.key"
echo "$bin"
