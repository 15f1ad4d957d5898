# Kubernetes test control plane and tests (issue 4). Included by the top-level Makefile,
# which defines ROOT, CACHE, BUILD and the `build` target. Everything lands in
# $(CACHE)/k8s (binaries, certificates, kubeconfig, state, logs); see docs/k8s-testing.md.
K8S_SCRIPTS := $(ROOT)/scripts/k8s
K8S_ENV := PGSHIFT_CACHE=$(CACHE)

.PHONY: k8s-tools k8s-up k8s-down test-k8s

# etcd, kube-apiserver, kube-controller-manager and the fake kubelet, built from the Go
# module proxy when missing or out of date (seconds when cached).
k8s-tools:
	$(K8S_ENV) $(K8S_SCRIPTS)/build.sh

# Starts the control plane on 127.0.0.1 from an empty cluster; writes $(CACHE)/k8s/kubeconfig.
k8s-up:
	$(K8S_ENV) $(K8S_SCRIPTS)/up.sh

k8s-down:
	$(K8S_ENV) $(K8S_SCRIPTS)/down.sh

# Unit + integration tests; brings the control plane up and down around them (even on
# failure). The Go builds run after the C++ build, never beside it.
test-k8s: build
	$(K8S_ENV) BUILD=$(BUILD) $(K8S_SCRIPTS)/test.sh
