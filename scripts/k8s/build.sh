#!/usr/bin/env bash
# Builds the test control plane from the Go module proxy into .cache/k8s/bin, only what is
# missing or out of date (a stamp per binary hashes its module's sources and the Go version):
#   etcd                      scripts/k8s/tools/etcd   (go.etcd.io/etcd/server/v3, etcdmain.Main)
#   kube-apiserver            scripts/k8s/tools/kube   (k8s.io/kubernetes cmd/kube-apiserver)
#   kube-controller-manager   scripts/k8s/tools/kube   (k8s.io/kubernetes cmd/kube-controller-manager)
#   kubectl                   scripts/k8s/tools/kube   (k8s.io/kubernetes cmd/kubectl; make install/deploy, test/e2e)
#   fakelet                   test/harness             (fake kubelet + service proxy)
# Usage: scripts/k8s/build.sh [NAME...]   (default: all)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# name -> module dir and package
module_of() {
  case "$1" in
    etcd) echo "$K8S_SCRIPTS/tools/etcd ." ;;
    kube-apiserver) echo "$K8S_SCRIPTS/tools/kube ./cmd/kube-apiserver" ;;
    kube-controller-manager) echo "$K8S_SCRIPTS/tools/kube ./cmd/kube-controller-manager" ;;
    kubectl) echo "$K8S_SCRIPTS/tools/kube ./cmd/kubectl" ;;
    fakelet) echo "$ROOT/test/harness ./fakelet" ;;
    *) k8s_log "unknown tool $1"; return 1 ;;
  esac
}

stamp_of() {  # a hash of everything that decides the binary; the other mains of a module that
  # holds several (tools/kube/cmd/*) do not count, so adding one rebuilds only that one
  local dir="$1" pkg="$2"
  { go version; cat "$K8S_SCRIPTS/versions.env"
    find "$dir" -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) \
      \( -not -path "$dir/cmd/*" -o -path "$dir/${pkg#./}/*" \) -print0 | sort -z | xargs -0 cat
  } | sha256sum | cut -d' ' -f1
}

build_one() {
  local name="$1" dir pkg
  read -r dir pkg <<<"$(module_of "$name")"
  local out="$K8S_BIN/$name" stamp
  stamp="$(stamp_of "$dir" "$pkg")"
  if [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then return; fi
  local ldflags="-s -w"
  case "$name" in
    kube-*|kubectl)
      local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
      ldflags="$ldflags -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
      ldflags="$ldflags -X k8s.io/component-base/version.gitMajor=1"
      ldflags="$ldflags -X k8s.io/component-base/version.gitMinor=$minor"
      ldflags="$ldflags -X k8s.io/component-base/version.gitTreeState=clean" ;;
  esac
  k8s_log "building $name (cold builds of the Kubernetes binaries take several minutes)"
  local start=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags="$ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  echo "$stamp" > "$out.stamp"
  k8s_log "built $name in $((SECONDS - start))s"
}

main() {
  mkdir -p "$K8S_BIN"
  local names=("$@")
  [ ${#names[@]} -gt 0 ] || names=(etcd kube-apiserver kube-controller-manager kubectl fakelet)
  # One at a time: each Kubernetes build alone saturates two cores.
  for n in "${names[@]}"; do build_one "$n"; done
}

main "$@"
