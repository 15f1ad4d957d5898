#!/usr/bin/env bash
# Fault injection for tests against the running test control plane:
#   ctl.sh stop-apiserver | start-apiserver | restart-apiserver
#   ctl.sh compact            # etcd: physically compact at the current revision
#   ctl.sh revision           # etcd: print the current revision
set -euo pipefail
# shellcheck source=up.sh
. "$(dirname "${BASH_SOURCE[0]}")/up.sh"

stop_apiserver() {  # a crash, not a goodbye: the apiserver's graceful stop waits ~30 s for watches
  local f="$K8S_RUN/kube-apiserver.pid"
  [ -f "$f" ] || return 0
  local pid; pid="$(cat "$f")"
  kill -KILL "$pid" 2>/dev/null || true
  local i
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  rm -f "$f"
}

revision() {  # etcd's gRPC gateway: a range on an empty key returns the header revision
  curl -sf -X POST "$ETCD_URL/v3/kv/range" -d '{"key":"AA=="}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])'
}

case "${1:-}" in
  stop-apiserver) stop_apiserver ;;
  start-apiserver) mkdir -p "$K8S_RUN" "$K8S_LOGS"; start_apiserver ;;
  restart-apiserver) stop_apiserver; start_apiserver ;;
  revision) revision ;;
  compact)
    rev="$(revision)"
    curl -sf -X POST "$ETCD_URL/v3/kv/compaction" -d "{\"revision\":\"$rev\",\"physical\":true}" >/dev/null
    echo "$rev" ;;
  *) echo "usage: $0 stop-apiserver|start-apiserver|restart-apiserver|compact|revision" >&2; exit 2 ;;
esac
