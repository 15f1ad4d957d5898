#!/usr/bin/env bash
# Runs every k8s test: the unit tests, then the integration tests and the e2e tests (pytest,
# test/e2e) against the test control plane. If the control plane is not running, it is
# started and, whatever the outcome, stopped again; one that was already up (make k8s-up) is
# reused and left running.
#   BUILD=build scripts/k8s/test.sh [gtest args for the integration tests...]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

BUILD="${BUILD:-$ROOT/build}"
UNIT="$BUILD/src/k8s/pgshift_k8s_unit_tests"
INTEGRATION="$BUILD/test/k8s/pgshift_k8s_integration_tests"
for t in "$UNIT" "$INTEGRATION"; do
  [ -x "$t" ] || { k8s_log "missing $t: build first (make build)"; exit 1; }
done

k8s_log "unit tests"
"$UNIT" --gtest_brief=1

started=0
if ! pid_alive kube-apiserver; then
  started=1
  trap '"$K8S_SCRIPTS/down.sh"' EXIT
  "$K8S_SCRIPTS/up.sh"
fi

k8s_log "integration tests against $APISERVER_URL"
rc=0
PGSHIFT_K8S_DIR="$K8S_DIR" PGSHIFT_K8S_CTL="$K8S_SCRIPTS/ctl.sh" "$INTEGRATION" "$@" || rc=$?
if [ $rc -ne 0 ]; then
  k8s_log "integration tests failed; control plane logs in $K8S_LOGS, pod logs in $K8S_STATE/fakelet/pods"
  tail -n 20 "$K8S_LOGS/fakelet.log" >&2 || true
fi

# End-to-end tests (test/e2e, pytest): the CRD, make install/deploy, RBAC, the operator.
"$K8S_SCRIPTS/build.sh" kubectl
k8s_log "e2e tests (test/e2e) against $APISERVER_URL"
e2e_rc=0
PGSHIFT_K8S_DIR="$K8S_DIR" KUBECONFIG="$KUBECONFIG_PATH" PGSHIFT_BIN="$BUILD/pgshift" \
  PGSHIFT_OPERATOR_BIN="$BUILD/pgshift-operator" \
  python3 -m pytest -q "$ROOT/test/e2e" || e2e_rc=$?
[ $e2e_rc -eq 0 ] || { k8s_log "e2e tests failed; logs in $K8S_LOGS"; [ $rc -ne 0 ] || rc=$e2e_rc; }
[ $started = 1 ] || k8s_log "control plane left running (make k8s-down stops it)"
exit $rc
