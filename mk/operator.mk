# The operator's manifests (deploy/), applied to the cluster of the current kubeconfig
# ($KUBECONFIG, else ~/.kube/config). Included by the top-level Makefile (ROOT, CACHE).
#   make install     the PostgresUpgrade CRD, waits until the API serves it
#   make uninstall   removes the CRD, and with it every PostgresUpgrade
#   make deploy      CRD, namespace pgshift-system, RBAC, the manager Deployment
#                    (IMG=registry/name:tag deploys another image)
#   make undeploy    the manager and its RBAC and namespace; the CRD and resources stay
# kubectl comes from PATH, else from .cache/k8s/bin (`make k8s-tools` builds it).
DEPLOY := $(ROOT)/deploy
KUBECTL ?= $(shell command -v kubectl 2>/dev/null || echo $(CACHE)/k8s/bin/kubectl)
IMG ?=
CRD_NAME := postgresupgrades.pgshift.dev

.PHONY: install uninstall deploy undeploy kubectl-check

kubectl-check:
	@command -v $(KUBECTL) >/dev/null 2>&1 || { \
	  echo "kubectl not found: put one on PATH, or run 'make k8s-tools' (builds $(CACHE)/k8s/bin/kubectl)" >&2; \
	  exit 1; }

install: kubectl-check
	$(KUBECTL) apply -k $(DEPLOY)/crd
	$(KUBECTL) wait --for=condition=Established --timeout=60s crd/$(CRD_NAME)

# Resources whose finalizer can no longer run (no operator) keep this waiting: deploy the
# operator again, or remove their finalizers by hand.
uninstall: kubectl-check
	$(KUBECTL) delete -k $(DEPLOY)/crd --ignore-not-found --timeout=120s

# With IMG, a throwaway overlay on deploy/default sets the image; deploy/ stays untouched
# (kustomize wants the base as a relative path).
deploy: kubectl-check
ifeq ($(strip $(IMG)),)
	$(KUBECTL) apply -k $(DEPLOY)/default
else
	@img='$(IMG)'; name="$$img"; pin="newTag: latest"; \
	case "$$img" in \
	  *@*) name="$${img%%@*}"; pin="digest: $${img#*@}" ;; \
	  *) case "$${img##*/}" in *:*) name="$${img%:*}"; pin="newTag: \"$${img##*:}\"" ;; esac ;; \
	esac; \
	rm -rf $(CACHE)/deploy-img && mkdir -p $(CACHE)/deploy-img && \
	base="$$(realpath -m --relative-to=$(CACHE)/deploy-img $(DEPLOY)/default)" && \
	printf '%s\n' 'apiVersion: kustomize.config.k8s.io/v1beta1' 'kind: Kustomization' \
	  'resources:' "  - $$base" 'images:' '  - name: ghcr.io/pgshift/pgshift-operator' \
	  "    newName: $$name" "    $$pin" > $(CACHE)/deploy-img/kustomization.yaml
	$(KUBECTL) apply -k $(CACHE)/deploy-img
endif
	$(KUBECTL) wait --for=condition=Established --timeout=60s crd/$(CRD_NAME)

# The manager first, so that it stops before its permissions go; then the RBAC objects and
# the namespace (kubectl waits until the namespace is gone).
undeploy: kubectl-check
	$(KUBECTL) delete -k $(DEPLOY)/manager --ignore-not-found --timeout=120s
	$(KUBECTL) delete -k $(DEPLOY)/rbac --ignore-not-found --timeout=120s

# `make k8s-up` also builds kubectl (the control plane's scripts build only its servers).
k8s-up: k8s-kubectl
.PHONY: k8s-kubectl
k8s-kubectl:
	$(K8S_ENV) $(K8S_SCRIPTS)/build.sh kubectl
