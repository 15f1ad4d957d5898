# Sourced by scripts/k8s/*.sh: where the test control plane lives and which ports it uses.
# Everything is under $PGSHIFT_CACHE/k8s (default .cache/k8s); nothing here is committed.
K8S_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$K8S_SCRIPTS/../.." && pwd)"
CACHE="${PGSHIFT_CACHE:-$ROOT/.cache}"
K8S_DIR="$CACHE/k8s"
K8S_BIN="$K8S_DIR/bin"
K8S_PKI="$K8S_DIR/pki"
K8S_RUN="$K8S_DIR/run"      # pid files
K8S_LOGS="$K8S_DIR/logs"
K8S_STATE="$K8S_DIR/state"  # etcd data, volumes, pod folders: wiped by every `up`
KUBECONFIG_PATH="$K8S_DIR/kubeconfig"

# shellcheck disable=SC1091
. "$K8S_SCRIPTS/versions.env"

# Loopback ports, below the lab's automatic range (25432-29999); override when they clash.
ETCD_PORT="${PGSHIFT_K8S_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${PGSHIFT_K8S_ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${PGSHIFT_K8S_APISERVER_PORT:-24443}"
APISERVER_URL="https://127.0.0.1:$APISERVER_PORT"
ETCD_URL="http://127.0.0.1:$ETCD_PORT"

# Go: toolchain, module and build caches, all below the project cache.
export PATH="/usr/local/go/bin:$PATH"
export GOPATH="$CACHE/go"
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="$CACHE/go/build"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
# The CPU is shared with C++ builds: two packages at a time.
export GOFLAGS="${PGSHIFT_GOFLAGS:--p=2}"

k8s_log() { printf 'k8s: %s\n' "$*" >&2; }

# Runs curl against the apiserver as the admin user.
admin_curl() {
  curl -sS --cacert "$K8S_PKI/ca.crt" --cert "$K8S_PKI/admin.crt" --key "$K8S_PKI/admin.key" "$@"
}

pid_alive() {  # pid_alive NAME: the process recorded in run/NAME.pid is running
  local f="$K8S_RUN/$1.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}
