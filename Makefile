# pgshift: the README's two commands, `make demo` and `make test`, and their parts.
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
CACHE := $(ROOT)/.cache
BUILD := $(ROOT)/build
BUILD_ASAN := $(ROOT)/build-asan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

include $(ROOT)/mk/k8s.mk
include $(ROOT)/mk/operator.mk

.PHONY: all setup build build-asan test test-unit test-integration test-matrix demo demo-k8s format clean lab-down help bench bench-metrics

all: build

help:
	@echo "make demo    install what is missing, build, run the demo (PostgreSQL, PgBouncer, load client)"
	@echo "make demo-k8s  the Kubernetes story: the operator moves a StatefulSet under load (test cluster)"
	@echo "make test    install what is missing, build (also with ASan+UBSan), run every test"
	@echo "make build   build build/pgshift"
	@echo "make setup   only install dependencies (idempotent; cached under .cache/)"
	@echo "make k8s-up  a real etcd + kube-apiserver + kube-controller-manager + fake kubelet (tests)"
	@echo "make install / uninstall   the PostgresUpgrade CRD, current kubeconfig (docs/kubernetes.md)"
	@echo "make deploy / undeploy     the operator: namespace pgshift-system, RBAC, Deployment [IMG=...]"
	@echo "make test-matrix  an upgrade under load for all 30 ordered pairs of majors 13..18"
	@echo "make bench   the cutover benchmark (bench/RESULTS.md)"

setup:
	@bash $(ROOT)/scripts/setup.sh

$(BUILD)/build.ninja:
	cmake -S $(ROOT) -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

$(BUILD_ASAN)/build.ninja:
	cmake -S $(ROOT) -B $(BUILD_ASAN) -G Ninja -DPGSHIFT_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug $(CMAKE_FLAGS)

build: setup $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

build-asan: setup $(BUILD_ASAN)/build.ninja
	cmake --build $(BUILD_ASAN) -j $(JOBS)

test-unit: build build-asan
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	cd $(BUILD_ASAN) && ctest --output-on-failure -j $(JOBS)

# Integration tests run the sanitizer build of pgshift against real servers and routers, test
# files IT_JOBS at a time (pytest-xdist from .cache/python; each file has its own lab and ports;
# IT_JOBS=1 runs them one after another).
IT_JOBS ?= 2
test-integration: build build-asan
	PGSHIFT_BIN=$(BUILD_ASAN)/pgshift PYTHONPATH=$(CACHE)/python python3 -m pytest -q \
	  $(if $(filter 1,$(IT_JOBS)),,-n $(IT_JOBS) --dist loadfile) --durations=15 $(ROOT)/test/integration

# Every ordered pair of majors 13..18 (`make test` runs a subset); the table goes to
# .cache/matrix/table.md (bench/RESULTS.md keeps the last full run's).
test-matrix: build
	rm -rf $(CACHE)/matrix && mkdir -p $(CACHE)/matrix
	PGSHIFT_BIN=$(BUILD)/pgshift PGSHIFT_MATRIX=full PGSHIFT_MATRIX_OUT=$(CACHE)/matrix/results.jsonl \
	  python3 -m pytest -q $(ROOT)/test/integration/test_matrix.py; rc=$$?; \
	  python3 $(ROOT)/bench/matrix_table.py $(CACHE)/matrix/results.jsonl | tee $(CACHE)/matrix/table.md; exit $$rc

# pytest last: its closing line sums up the run.
test: test-unit test-k8s test-integration

demo: build
	@bash $(ROOT)/scripts/demo.sh

# The Kubernetes story on the test cluster (scripts/demo_k8s.py); DEMO_SIZE, DEMO_RATE.
demo-k8s: build k8s-tools k8s-up
	@$(K8S_ENV) $(K8S_SCRIPTS)/build.sh kubectl
	@$(K8S_ENV) python3 $(ROOT)/scripts/demo_k8s.py

bench: build
	python3 $(ROOT)/bench/cutover.py --runs 5

bench-metrics: build
	python3 $(ROOT)/bench/metrics.py --runs 4 --modes off,scraped,served

lab-down:
	-$(BUILD)/pgshift lab down

format:
	clang-format -i $$(git -C $(ROOT) ls-files '*.cc' '*.h')

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
