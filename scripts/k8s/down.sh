#!/usr/bin/env bash
# Stops the test control plane started by up.sh (fake kubelet first, so PostgreSQL servers
# shut down cleanly, then the controller manager, the apiserver and etcd). Idempotent.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

stop() {  # stop NAME [SECONDS]: TERM, then KILL after SECONDS (default 15)
  local f="$K8S_RUN/$1.pid" grace="${2:-15}"
  [ -f "$f" ] || return 0
  local pid; pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq $((grace * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      [ "$1" = kube-apiserver ] || k8s_log "$1 ($pid) did not stop in ${grace}s; killing"; kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

stop fakelet 30  # stops its PostgreSQL servers first
stop kube-controller-manager 5
stop kube-apiserver 2  # its graceful stop waits for open watches; nothing to keep here
stop etcd 10
k8s_log "down"
