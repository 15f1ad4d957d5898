#!/usr/bin/env bash
# Starts the test control plane on loopback: etcd, kube-apiserver, kube-controller-manager and
# the fake kubelet with its service proxy. Each `up` begins from an empty cluster (state/ is
# wiped); certificates are generated once and kept. Writes the admin kubeconfig to
# .cache/k8s/kubeconfig and the Service addresses to .cache/k8s/services.json.
#   scripts/k8s/up.sh            # all
#   scripts/k8s/up.sh --no-fakelet
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"


# --- certificates ------------------------------------------------------------------------
gen_pki() {
  [ -f "$K8S_PKI/done" ] && return
  k8s_log "generating certificates in $K8S_PKI"
  rm -rf "$K8S_PKI"; mkdir -p "$K8S_PKI"; cd "$K8S_PKI"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 3650 -subj "/CN=pgshift-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  issue() {  # issue NAME SUBJECT EXTENSIONS...
    local name="$1" subj="$2"; shift 2
    openssl req -new "${ec[@]}" -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
    printf '%s\n' "$@" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
  }
  issue apiserver "/CN=kube-apiserver" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  # The admin: any client cert in group system:masters is cluster-admin under RBAC.
  issue admin "/O=system:masters/CN=pgshift-admin" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=clientAuth"
  # Service-account token signing pair.
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out sa.key 2>/dev/null
  openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
  chmod 600 ./*.key
  touch done
  cd - >/dev/null
}

write_kubeconfig() {  # write_kubeconfig PATH: admin kubeconfig with the *-data fields
  local b64="base64 -w0"
  cat > "$1.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: pgshift-test
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $($b64 < "$K8S_PKI/ca.crt")
users:
- name: pgshift-admin
  user:
    client-certificate-data: $($b64 < "$K8S_PKI/admin.crt")
    client-key-data: $($b64 < "$K8S_PKI/admin.key")
contexts:
- name: pgshift-test
  context:
    cluster: pgshift-test
    user: pgshift-admin
    namespace: default
current-context: pgshift-test
KC
  chmod 600 "$1.tmp"; mv "$1.tmp" "$1"
}

# start NAME COMMAND...: runs in its own session, output to logs/NAME.log, pid to run/NAME.pid
start() {
  local name="$1"; shift
  if pid_alive "$name"; then k8s_log "$name already running"; return; fi
  # The daemons keep none of the caller's other descriptors: run as `flock LOCK make k8s-up`,
  # an inherited lock file would stay locked for as long as the cluster runs.
  ( for fd in /proc/$BASHPID/fd/*; do
      fd="${fd##*/}"; [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
    done
    exec setsid "$@" >>"$K8S_LOGS/$name.log" 2>&1 < /dev/null ) &
  echo $! > "$K8S_RUN/$name.pid"
}

wait_for() {  # wait_for WHAT SECONDS NAME COMMAND...: polls COMMAND, fails when NAME died
  local what="$1" secs="$2" name="$3"; shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$name"; then
      k8s_log "$name exited while waiting for $what; last lines of $K8S_LOGS/$name.log:"
      tail -n 30 "$K8S_LOGS/$name.log" >&2; return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      k8s_log "timed out after ${secs}s waiting for $what; see $K8S_LOGS/$name.log"
      tail -n 30 "$K8S_LOGS/$name.log" >&2; return 1
    fi
    sleep 0.2
  done
}

start_etcd() {
  start etcd "$K8S_BIN/etcd" --name=pgshift --data-dir="$K8S_STATE/etcd" \
    --listen-client-urls="$ETCD_URL" --advertise-client-urls="$ETCD_URL" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="pgshift=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level=warn
  wait_for "etcd health" 30 etcd curl -sf "$ETCD_URL/health"
}

# Also used by ctl.sh to restart the apiserver with the same flags.
start_apiserver() {
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers="$ETCD_URL" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --cert-dir="$K8S_PKI" --tls-cert-file="$K8S_PKI/apiserver.crt" \
    --tls-private-key-file="$K8S_PKI/apiserver.key" --client-ca-file="$K8S_PKI/ca.crt" \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
    --authorization-mode=RBAC \
    --service-account-issuer="$APISERVER_URL" \
    --service-account-key-file="$K8S_PKI/sa.pub" \
    --service-account-signing-key-file="$K8S_PKI/sa.key" \
    --endpoint-reconciler-type=none \
    --watch-cache-sizes=podtemplates#0 \
    --audit-policy-file="$K8S_SCRIPTS/audit-policy.yaml" --audit-log-path="$K8S_LOGS/audit.log" \
    --audit-log-maxsize=100 --audit-log-maxbackup=1 \
    --profiling=false --v=1
  # No watch cache for podtemplates: watches on them read etcd directly, so an etcd
  # compaction yields a real 410 Gone there (test/k8s uses that).
  # The audit log records the operator ServiceAccount's Lease requests only (with the Pod a
  # bound token names): test_incluster.py checks who the in-cluster operator is.
  wait_for "kube-apiserver /readyz" 90 kube-apiserver \
    admin_curl -f "$APISERVER_URL/readyz"
}

start_controller_manager() {
  write_kubeconfig "$K8S_DIR/controller-manager.kubeconfig"
  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$K8S_DIR/controller-manager.kubeconfig" \
    --leader-elect=false --secure-port=0 \
    --service-account-private-key-file="$K8S_PKI/sa.key" --root-ca-file="$K8S_PKI/ca.crt" \
    --use-service-account-credentials=false \
    --controllers='*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle,-csrsigning' \
    --profiling=false --v=1
  # The serviceaccount controller makes default/default: a sign that controllers run.
  wait_for "kube-controller-manager (default ServiceAccount)" 60 kube-controller-manager \
    admin_curl -f "$APISERVER_URL/api/v1/namespaces/default/serviceaccounts/default"
}

start_fakelet() {
  # The pgshift-operator image (make deploy) runs as the build's binaries.
  start fakelet "$K8S_BIN/fakelet" --kubeconfig="$KUBECONFIG_PATH" --root="$ROOT" \
    --postgres-cache="$CACHE/postgres" \
    --operator-bin="${PGSHIFT_OPERATOR_BIN:-$ROOT/build/pgshift-operator}" \
    --pgshift-bin="${PGSHIFT_BIN:-$ROOT/build/pgshift}" --pg-client-dir="$CACHE/pgclient" \
    --state-dir="$K8S_STATE/fakelet" --services-file="$K8S_DIR/services.json"
  # The fake kubelet writes services.json once its Node is registered and its caches synced.
  wait_for "fake kubelet (Node registered)" 30 fakelet test -f "$K8S_DIR/services.json"
}

main() {
  local WITH_FAKELET=1 a
  for a in "$@"; do
    case "$a" in
      --no-fakelet) WITH_FAKELET=0 ;;
      *) echo "usage: $0 [--no-fakelet]" >&2; exit 2 ;;
    esac
  done
  "$K8S_SCRIPTS/build.sh" etcd kube-apiserver kube-controller-manager
  [ $WITH_FAKELET = 0 ] || "$K8S_SCRIPTS/build.sh" fakelet
  mkdir -p "$K8S_RUN" "$K8S_LOGS"
  local start_time=$SECONDS
  if pid_alive etcd || pid_alive kube-apiserver; then
    k8s_log "control plane already running (scripts/k8s/down.sh stops it)"
  else
    rm -rf "$K8S_STATE" "$K8S_LOGS"/*.log "$K8S_DIR/services.json"
    mkdir -p "$K8S_STATE"
    chmod 755 "$K8S_DIR" "$K8S_STATE"
  fi
  gen_pki
  write_kubeconfig "$KUBECONFIG_PATH"
  start_etcd
  start_apiserver
  start_controller_manager
  [ $WITH_FAKELET = 0 ] || start_fakelet
  k8s_log "up in $((SECONDS - start_time))s: $APISERVER_URL, KUBECONFIG=$KUBECONFIG_PATH"
}

[ "${BASH_SOURCE[0]}" != "$0" ] || main "$@"
