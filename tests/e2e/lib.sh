# shellcheck shell=bash
# The steps tests/e2e/real/run.sh and tests/e2e/kind/run.sh share, so that what the real-node
# path runs on a machine without Docker is, step for step, what the kind path runs: only
# bringing the cluster up and down and loading the images differ. Sourced, not run.
#
# Inputs: E2E_REPO (the repository), E2E_WORK (a fresh directory). Environment:
# INPLACE_E2E_IMAGE=debug (the debug binary with its shared libraries instead of the static
# release build), TEST_THREADS (the suites' --test-threads; default 3).

e2e_step() { printf '\n==> %s\n' "$*" >&2; }

# Builds a cargo target and prints its executable (not `cargo run`: callers need the PID of the
# program itself, or run it several times).
e2e_executable() {
  (cd "$E2E_REPO" && cargo build --locked -q "$@" --message-format=json-render-diagnostics) \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
}

# Sets E2E_TESTENV (the harness), E2E_BUNDLE (the test images in one archive), E2E_IMAGE and
# E2E_ARCHIVE (the product image) and E2E_OVERLAY (deploy/ with only the image swapped).
e2e_images() {
  e2e_step "the harness, the test images and the product image"
  E2E_TESTENV=$(e2e_executable -p testenv --bin testenv)
  [ -x "$E2E_TESTENV" ] || { echo "cargo built no testenv binary" >&2; return 1; }
  E2E_BUNDLE=$("$E2E_TESTENV" images | sed -n 's/^bundle //p')
  [ -f "$E2E_BUNDLE" ] || { echo "testenv images printed no bundle" >&2; return 1; }
  E2E_OVERLAY="$E2E_WORK/overlay"
  local line binary
  if [ "${INPLACE_E2E_IMAGE:-}" = debug ]; then
    binary=$(e2e_executable -p inplace-upgrade --bin inplace-upgrade)
    line=$("$E2E_TESTENV" product-image --out "$E2E_WORK/image" --shared-libraries "$binary" \
      --overlay "$E2E_OVERLAY")
  else
    line=$("$E2E_TESTENV" product-image --overlay "$E2E_OVERLAY")
  fi
  read -r E2E_IMAGE E2E_ARCHIVE <<<"$line"
  [ -f "$E2E_ARCHIVE" ] || { echo "testenv product-image printed '$line'" >&2; return 1; }
  echo "product image $E2E_IMAGE ($E2E_ARCHIVE)" >&2
}

# Applies the overlay with kubectl ($1) and waits for the CRD and both Deployments.
e2e_install() {
  local kubectl=$1
  e2e_step "deploy/ with the image swapped"
  cat "$E2E_OVERLAY/kustomization.yaml" >&2
  "$kubectl" apply -k "$E2E_OVERLAY" --server-side
  "$kubectl" wait --for=condition=Established crd/inplaceupgradepolicies.inplace-upgrade.io --timeout=60s
  "$kubectl" -n inplace-upgrade-system rollout status deployment/inplace-upgrade-controller --timeout=180s
  "$kubectl" -n inplace-upgrade-system rollout status deployment/inplace-upgrade-webhook --timeout=180s
  "$kubectl" -n inplace-upgrade-system get pods -o wide >&2
}

# Runs each suite (after $1, the kubectl to use) against the cluster of $KUBECONFIG through INPLACE_E2E_KUBECONFIG (and
# e2e_deploy applies INPLACE_E2E_KUSTOMIZATION, the overlay, instead of deploy/); prints which
# failed. Returns 0 only if every suite passed.
e2e_suites() {
  local kubectl=$1 failed=() suite
  shift
  export INPLACE_E2E_KUBECONFIG="$KUBECONFIG"
  export INPLACE_E2E_KUSTOMIZATION="$E2E_OVERLAY"
  for suite in "$@"; do
    e2e_step "suite $suite"
    if ! (cd "$E2E_REPO" && cargo test --locked -p inplace-upgrade --test "$suite" \
      -- --test-threads="${TEST_THREADS:-3}"); then
      failed+=("$suite")
    fi
    # The suites leave their namespaces on an existing cluster; their pods' CPU requests
    # would starve the next suite.
    "$kubectl" delete namespace -l testenv.inplace-upgrade.io/test --wait=false >&2 || true
  done
  e2e_step "result"
  if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (of $*)" >&2
    return 1
  fi
  echo "passed: $*" >&2
}
