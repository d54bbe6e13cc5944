#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests run on, from the release pinned in tests/k8s/go.mod,
# into a cache outside the repo keyed by that release, go.sum and the Go version. A warm cache
# makes this a no-op. Prints the bin directory.
#   control plane: kube-apiserver, kube-controller-manager, kubectl
#   real nodes:    kubelet, kube-proxy, kube-scheduler (tests/testenv --real-nodes)
#
#   INPLACE_K8S_CACHE  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/inplace-upgrade)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2 }' "$here/go.mod")
[[ $version =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || { echo "build.sh: cannot read the Kubernetes version from $here/go.mod" >&2; exit 1; }
minor=${BASH_REMATCH[1]}
root=${INPLACE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inplace-upgrade}
bin="$root/kubernetes-$version/bin"
key="$version $(sha256sum "$here/go.sum" | cut -c1-16) $(go env GOVERSION)"

binaries=(kube-apiserver kube-controller-manager kubectl kubelet kube-proxy kube-scheduler)
warm() {
  [[ -f $bin/.key && $(cat "$bin/.key") == "$key" ]] || return 1
  for b in "${binaries[@]}"; do [[ -x $bin/$b ]] || return 1; done
}
if warm; then echo "$bin"; exit 0; fi

mkdir -p "$bin"
# Two harnesses meeting a cold cache must not build into the same files: the second waits,
# then finds the cache warm.
exec 9>"$bin/.lock"
flock 9
if warm; then echo "$bin"; exit 0; fi
rm -f "$bin/.key"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
cd "$here"
for b in "${binaries[@]}"; do
  echo "build.sh: building $b $version (cold: several minutes on 2 cores)" >&2
  CGO_ENABLED=0 go build -mod=readonly -trimpath -tags selinux,notest -ldflags "$ldflags" \
    -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b"
  mv "$bin/$b.tmp" "$bin/$b"
done
echo "$key" > "$bin/.key"
echo "$bin"
