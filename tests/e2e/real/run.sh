#!/usr/bin/env bash
# The kind path without Docker: the end-to-end suites against real nodes on this host with the
# product installed in-cluster from deploy/. The twin of tests/e2e/kind/run.sh, step for step:
#   1. real nodes up: `testenv up --real-nodes N --kube-proxy --registry` (kubelet + containerd
#      on this host, kube-proxy for Service IPs, the loopback registry)   [kind: kind create cluster]
#   2. the product image built (tests/testenv product-image) and the test image archives
#      imported into every node                                            [kind: kind load image-archive]
#   3. deploy/ applied with only the image swapped (an overlay), both Deployments rolled out
#   4. the suites run against the cluster through INPLACE_E2E_KUBECONFIG (and e2e_deploy applies
#      INPLACE_E2E_KUSTOMIZATION, the overlay)
#   5. everything torn down and the host left as it was, on success, failure or Ctrl-C
# Exit 0 only if every suite passed.
#
# Needs: root on Linux (real nodes; missing Debian packages are installed), cargo. Usage:
#   tests/e2e/real/run.sh                   # e2e_controller e2e_webhook e2e_deploy
#   tests/e2e/real/run.sh e2e_controller    # some suites (cargo test --test names)
# Environment: REAL_NODES (default 4: each real node reports this host's 2 CPUs, and the pods
# of a suite's finished tests keep their requests, since their namespaces stay until the suite
# ends; with 2 nodes the last tests of e2e_controller stayed Pending on "Insufficient cpu"),
# TEST_THREADS (default 3), INPLACE_E2E_IMAGE=debug (the debug binary with its shared
# libraries, as CI's e2e_incluster installs, instead of the static release build, whose cold
# compile takes long), KEEP=1 to keep the environment's directory (logs) after the run.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
suites=("$@")
if [ ${#suites[@]} -eq 0 ]; then
  suites=(e2e_controller e2e_webhook e2e_deploy)
fi
nodes=${REAL_NODES:-4}
[ "$(id -u)" = 0 ] || { echo "real nodes need root (kubelet and containerd): run as root" >&2; exit 2; }

work=$(mktemp -d /tmp/inplace-real-e2e.XXXXXX)
up_pid=
testenv=

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    echo "==> tearing down the real nodes (testenv up, pid $up_pid)" >&2
    kill -TERM "$up_pid" 2>/dev/null || true
    # testenv stops its processes and restores the host itself; give it time, then make sure.
    for _ in $(seq 120); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$up_pid" 2>/dev/null; then
      kill -KILL "$up_pid" 2>/dev/null || true
      wait "$up_pid" 2>/dev/null || true
    fi
  fi
  if [ -n "$testenv" ]; then
    # A no-op after a clean stop; after a killed one it removes what that run left.
    "$testenv" cleanup >&2 || status=1
  fi
  if [ -n "${KEEP:-}" ]; then
    echo "kept $work (logs in $work/env/logs)" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=tests/e2e/lib.sh
source "$here/../lib.sh"
E2E_REPO=$repo E2E_WORK=$work
e2e_images
testenv=$E2E_TESTENV

e2e_step "real nodes up: $nodes node(s), kube-proxy, the loopback registry; both images imported"
"$testenv" up --dir "$work/env" --nodes 0 --real-nodes "$nodes" --kube-proxy --registry \
  --image "$E2E_BUNDLE" --image "$E2E_ARCHIVE" >"$work/up.log" 2>&1 &
up_pid=$!
until grep -qx ready "$work/up.log"; do
  if ! kill -0 "$up_pid" 2>/dev/null; then
    cat "$work/up.log" >&2
    echo "the real-node environment did not start" >&2
    exit 1
  fi
  sleep 1
done
export KUBECONFIG="$work/env/kubeconfig"
kubectl="$work/env/bin/kubectl"
"$kubectl" get nodes -o wide >&2

e2e_install "$kubectl"
e2e_suites "$kubectl" "${suites[@]}"
