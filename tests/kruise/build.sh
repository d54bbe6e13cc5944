#!/usr/bin/env bash
# Builds OpenKruise's kruise-manager from its Go module (the release pinned in tests/kruise/go.mod)
# and renders, from the same module version, what it needs installed: its CRDs and its webhook
# configurations. For the side-by-side comparison (docs/comparison.md, benches/kruise.rs); not
# used by the tests or CI. Nothing of OpenKruise is in this repository: the Go toolchain fetches
# it into the module cache.
#
# Output, in a cache outside the repo keyed by that release, go.sum and the Go version (a warm
# cache makes this a no-op); prints the directory:
#   bin/kruise-manager   the manager (controllers + webhook server; no kruise-daemon)
#   crds/*.yaml          config/crd/bases of the module
#   webhook.yaml         config/webhook rendered by `kubectl kustomize` with the `kruise-` prefix:
#                        the Mutating- and ValidatingWebhookConfigurations the manager expects to
#                        exist and patches (it points them at WEBHOOK_HOST with its own CA)
#
# Cold: ~10 min on 2 idle cores (module download ~250 MB into the Go module cache, compile into
# the Go build cache, a 110 MB binary); warm Go caches: ~1 min (link only).
#
#   INPLACE_K8S_CACHE  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/inplace-upgrade)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(sed -nE 's#^(require)?[[:space:]]*github.com/openkruise/kruise (v[0-9][^ ]*).*#\2#p' "$here/go.mod" | head -1)
[[ $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "build.sh: cannot read the OpenKruise version from $here/go.mod" >&2; exit 1; }
root=${INPLACE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inplace-upgrade}
out="$root/kruise-$version"
key="$version $(sha256sum "$here/go.sum" | cut -c1-16) $(go env GOVERSION)"

warm() {
  [[ -f $out/.key && $(cat "$out/.key") == "$key" && -x $out/bin/kruise-manager && -s $out/webhook.yaml ]] \
    && compgen -G "$out/crds/*.yaml" > /dev/null
}
if warm; then echo "$out"; exit 0; fi

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
if warm; then echo "$out"; exit 0; fi
rm -f "$out/.key"
# kubectl (for kustomize) comes from the Kubernetes build the tests use.
kubectl="$("$here/../k8s/build.sh")/kubectl"

cd "$here"
echo "build.sh: building kruise-manager $version (cold: ~10 min on 2 cores)" >&2
mkdir -p "$out/bin"
CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" \
  -o "$out/bin/kruise-manager.tmp" github.com/openkruise/kruise
mv "$out/bin/kruise-manager.tmp" "$out/bin/kruise-manager"

module=$(go list -mod=readonly -m -f '{{.Dir}}' github.com/openkruise/kruise)
rm -rf "$out/crds"
mkdir -p "$out/crds"
cp "$module"/config/crd/bases/*.yaml "$out/crds/"
chmod -R u+w "$out/crds"
# config/webhook with the `kruise-` name prefix of its config/default (which also holds the
# manager's Deployment and RBAC, not wanted here): the names the manager looks up.
kz=$(mktemp -d)
trap 'rm -rf "$kz"' EXIT
cp -r "$module/config/webhook" "$kz/webhook"
chmod -R u+w "$kz"
printf 'namePrefix: kruise-\nresources:\n- webhook\n' > "$kz/kustomization.yaml"
"$kubectl" kustomize "$kz" 2>/dev/null > "$out/webhook.yaml.tmp"
mv "$out/webhook.yaml.tmp" "$out/webhook.yaml"
echo "$key" > "$out/.key"
echo "$out"
