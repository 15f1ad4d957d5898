#!/usr/bin/env bash
# Writes a kubeconfig that acts as a ServiceAccount, with a token from the TokenRequest API
# (`kubectl create token`), for the cluster of the current kubeconfig ($KUBECONFIG, default
# the test control plane's). The e2e tests run pgshift-operator with it to prove that the
# RBAC in deploy/rbac is enough.
#   scripts/k8s/sa-kubeconfig.sh NAMESPACE SERVICEACCOUNT OUT [DURATION]   (DURATION default 2h)
# kubectl: $KUBECTL, else from PATH, else .cache/k8s/bin/kubectl. The token is never on a
# command line or in the output; OUT is created mode 0600.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

if [ $# -lt 3 ] || [ $# -gt 4 ]; then
  echo "usage: $0 NAMESPACE SERVICEACCOUNT OUT [DURATION]" >&2
  exit 2
fi
ns="$1" sa="$2" out="$3" duration="${4:-2h}"
export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}"
kubectl="${KUBECTL:-$(command -v kubectl 2>/dev/null || echo "$K8S_BIN/kubectl")}"
[ -x "$kubectl" ] || { k8s_log "no kubectl: run scripts/k8s/build.sh kubectl"; exit 1; }

# The current context's API server and CA (as data, whether the source kubeconfig holds a file
# path or data).
server="$("$kubectl" config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
ca_data="$("$kubectl" config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
if [ -z "$ca_data" ]; then
  ca_file="$("$kubectl" config view --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')"
  [ -n "$ca_file" ] && ca_data="$(base64 -w0 < "$ca_file")"
fi
[ -n "$server" ] || { k8s_log "no API server in the current kubeconfig context"; exit 1; }

token="$("$kubectl" -n "$ns" create token "$sa" --duration="$duration")" || {
  k8s_log "could not get a token for ServiceAccount $ns/$sa"; exit 1; }

tmp="$(mktemp "$(dirname "$out")/.sa-kubeconfig.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
chmod 600 "$tmp"
{
  printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster:\n'
  printf '    server: %s\n' "$server"
  [ -z "$ca_data" ] || printf '    certificate-authority-data: %s\n' "$ca_data"
  printf 'users:\n- name: %s\n  user:\n    token: %s\n' "system:serviceaccount:$ns:$sa" "$token"
  printf 'contexts:\n- name: %s\n  context:\n    cluster: cluster\n    user: %s\n    namespace: %s\n' \
    "$sa" "system:serviceaccount:$ns:$sa" "$ns"
  printf 'current-context: %s\n' "$sa"
} > "$tmp"
mv "$tmp" "$out"
trap - EXIT
