#!/usr/bin/env bash
# Runs the end-to-end suites against a kind cluster (real kubelets, real container runtime),
# with the product installed in-cluster from deploy/. The twin of tests/e2e/real/run.sh (which
# runs every step but the first and the image loading on a machine without Docker):
#   1. kind create cluster                                       [real: testenv up --real-nodes]
#   2. the product image and the test image archives built by tests/testenv (no Docker build)
#      and loaded into every node with `kind load image-archive`  [real: ctr images import]
#   3. deploy/ applied with only the image swapped (an overlay), both Deployments rolled out
#   4. the suites run against the cluster through INPLACE_E2E_KUBECONFIG (and e2e_deploy applies
#      INPLACE_E2E_KUSTOMIZATION, the overlay)
#   5. the cluster deleted, on success, failure or Ctrl-C
# Steps 2-4 are tests/e2e/lib.sh, shared with the real-node path. Exit 0 only if every suite
# passed.
#
# Needs: docker, kind, cargo (kubectl is this build's, from tests/k8s/build.sh). Usage:
#   tests/e2e/kind/run.sh                  # e2e_controller e2e_webhook e2e_deploy
#   tests/e2e/kind/run.sh e2e_controller   # some suites (cargo test --test names)
# Environment: KIND_CLUSTER (default inplace-upgrade-e2e), KIND_NODE_IMAGE (kindest/node:vX,
# Kubernetes >= 1.33), KEEP_CLUSTER=1 to leave the cluster up, INPLACE_E2E_IMAGE=debug (the
# debug binary with its shared libraries instead of the static release build), TEST_THREADS.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
cluster=${KIND_CLUSTER:-inplace-upgrade-e2e}
suites=("$@")
if [ ${#suites[@]} -eq 0 ]; then
  suites=(e2e_controller e2e_webhook e2e_deploy)
fi
for tool in docker kind cargo; do
  command -v "$tool" >/dev/null || { echo "the kind path needs '$tool' on PATH" >&2; exit 2; }
done

work=$(mktemp -d /tmp/inplace-kind-e2e.XXXXXX)
created=

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$created" ]; then
    if [ -z "${KEEP_CLUSTER:-}" ]; then
      kind delete cluster --name "$cluster" >&2 || status=1
    else
      echo "cluster $cluster kept; KUBECONFIG=$work/kubeconfig" >&2
    fi
  fi
  [ -n "${KEEP_CLUSTER:-}" ] || rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=tests/e2e/lib.sh
source "$here/../lib.sh"
E2E_REPO=$repo E2E_WORK=$work
e2e_images

e2e_step "kind create cluster $cluster"
export KUBECONFIG="$work/kubeconfig"
created=1
kind create cluster --name "$cluster" --config "$here/kind-config.yaml" \
  --kubeconfig "$KUBECONFIG" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}

e2e_step "kind load image-archive: the test images and the product image"
kind load image-archive "$E2E_BUNDLE" --name "$cluster"
kind load image-archive "$E2E_ARCHIVE" --name "$cluster"
# This build's kubectl (the suites use it too): tests/k8s/build.sh prints its bin directory.
kubectl=$("$repo/tests/k8s/build.sh" | tail -n 1)/kubectl
"$kubectl" get nodes -o wide >&2

e2e_install "$kubectl"
e2e_suites "$kubectl" "${suites[@]}"
