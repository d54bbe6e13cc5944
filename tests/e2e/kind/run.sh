#!/usr/bin/env bash
# Runs the end-to-end suites against a kind cluster (real kubelets, real container runtime):
# create the cluster, build the image and `kind load` it, apply deploy/ with that image, run
# the suites with INPLACE_E2E_KUBECONFIG pointing at the cluster, delete the cluster.
#
# Needs: docker, kind, kubectl (>= 1.33), cargo. Usage, from anywhere:
#   tests/e2e/kind/run.sh                  # all suites
#   tests/e2e/kind/run.sh e2e_controller   # some suites (cargo test --test names)
# Environment: KIND_CLUSTER (default inplace-upgrade-e2e), KIND_NODE_IMAGE (kindest/node:vX),
# KEEP_CLUSTER=1 to leave the cluster up for inspection.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
cluster=${KIND_CLUSTER:-inplace-upgrade-e2e}
image=inplace-upgrade:kind
suites=("$@")
if [ ${#suites[@]} -eq 0 ]; then
  suites=(e2e_controller e2e_webhook e2e_deploy)
fi

# Under target/ (git-ignored, and not inside deploy/: kustomize refuses an overlay inside its base).
work="$repo/target/kind-e2e"
rm -rf "$work"
mkdir -p "$work/overlay"
export KUBECONFIG="$work/kubeconfig"

cleanup() {
  if [ -z "${KEEP_CLUSTER:-}" ]; then
    kind delete cluster --name "$cluster" || true
  else
    echo "cluster $cluster kept; KUBECONFIG=$KUBECONFIG" >&2
  fi
}
trap cleanup EXIT

kind create cluster --name "$cluster" --config "$here/kind-config.yaml" \
  --kubeconfig "$KUBECONFIG" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}

docker build -f "$repo/deploy/Dockerfile" -t "$image" "$repo"
kind load docker-image "$image" --name "$cluster"

# deploy/ exactly, with only the image swapped for the one just loaded (its tag is not
# :latest, so the default pull policy IfNotPresent uses the loaded copy).
cat > "$work/overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../../../deploy
images:
- name: ghcr.io/inplace-upgrade/inplace-upgrade
  newName: ${image%%:*}
  newTag: ${image##*:}
YAML
kubectl apply -k "$work/overlay" --server-side
kubectl wait --for=condition=Established crd/inplaceupgradepolicies.inplace-upgrade.io --timeout=60s
kubectl -n inplace-upgrade-system rollout status deployment/inplace-upgrade-controller --timeout=180s
kubectl -n inplace-upgrade-system rollout status deployment/inplace-upgrade-webhook --timeout=180s

# The suites reach the cluster through INPLACE_E2E_KUBECONFIG instead of starting the local
# control plane; e2e_deploy applies INPLACE_E2E_KUSTOMIZATION (this overlay) instead of deploy/.
export INPLACE_E2E_KUBECONFIG="$KUBECONFIG"
export INPLACE_E2E_KUSTOMIZATION="$work/overlay"
tests=()
for s in "${suites[@]}"; do tests+=(--test "$s"); done
# cargo runs the suites one after another; e2e_deploy comes last because it scales the
# in-cluster controller down while it runs the binary under the controller's ServiceAccount.
cd "$repo"
cargo test -p inplace-upgrade "${tests[@]}"
