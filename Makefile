# Every target here is used by CI (.ci/run -> make test) or named in the README.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv system-deps lint test demo bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

## Debian packages the tests and the demo use as real peers (Orthanc, dcmtk, dicom3tools, etcd)
system-deps:
	scripts/install-system-deps.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: venv system-deps lint check-crds cluster-bins helm triton-venv hl7-peer node-peers identity-peer node-deps node-bins images
	$(VENV)/bin/pytest

demo: venv system-deps hl7-peer node-peers
	$(PY) scripts/demo.py

bench: venv system-deps hl7-peer node-peers
	$(PY) -m bench

.PHONY: fuzz
## The DICOM parse path and the HL7 parser under hypothesis far longer than CI runs them (FUZZ_EXAMPLES per test,
## random seeds; CI's hypothesis seeds are fixed, tests/conftest.py) and the de-identification property on new draws;
## a crashing input is saved under $PACSFLOW_CACHE/fuzz-crashers to become a regression test
FUZZ_EXAMPLES ?= 20000
fuzz: venv
	PACSFLOW_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) PACSFLOW_FUZZ_RANDOM=1 \
	  PACSFLOW_FUZZ_CRASH_DIR=$${PACSFLOW_CACHE:-$$HOME/.cache/pacsflow}/fuzz-crashers nice -n 10 $(VENV)/bin/pytest \
	  -p no:cacheprovider tests/unit/pacsflow_router/test_fuzz_dicom.py tests/unit/pacsflow_router/test_fuzz_hl7.py \
	  tests/unit/pacsflow_router/test_deid_property.py

.PHONY: loadtest
## Sustained mixed load, not part of make test: a large hospital's peak hour x4 for 10 minutes against one router,
## then against 3 routers sharing one Triton (bench/loadtest.py; LOADTEST_ARGS=--short for the one-minute smoke)
loadtest: venv system-deps node-peers triton-venv
	nice -n 10 $(PY) -m bench.loadtest $(LOADTEST_ARGS)
	nice -n 10 $(PY) -m bench.loadtest --triton $(LOADTEST_ARGS)

.PHONY: crds check-crds
## CRDs, the chart's copy and docs/crds.md, generated from the operator's pydantic models
crds: venv
	$(PY) -m pacsflow_operator.crdgen

## Fails when a generated CRD file differs from what the models produce (run `make crds`)
check-crds: venv
	$(PY) -m pacsflow_operator.crdgen --check

.PHONY: cluster-bins helm cluster-up cluster-down
## kube-apiserver + kube-controller-manager built from the Go module proxy, cached outside the repo
## (${PACSFLOW_CACHE:-~/.cache/pacsflow}); the first build takes ~20 min (docs/cluster.md)
cluster-bins:
	scripts/cluster.sh bins

## helm v3, built into the same cache (tests install the chart with it)
helm:
	scripts/cluster.sh helm

## A real control plane and one node (containerd, kubelet; the images of `make images`) in the background: writes .cluster/kubeconfig
cluster-up: venv system-deps node-deps cluster-bins
	scripts/cluster.sh up

## Stops the node and the control plane started by cluster-up (by PID) and removes what the node made
cluster-down:
	scripts/cluster.sh down

.PHONY: node-deps images node-bins
## Debian's buildah, debootstrap, containerd, runc, CNI plugins, iptables, conntrack (images and the node, docs/pods.md)
node-deps:
	scripts/install-node-deps.sh

## Router, operator and Triton-CPU images: buildah bud of the Dockerfiles on a local debootstrap'd bookworm base,
## version-tagged, cached layers, exported for `ctr images import` under ${PACSFLOW_CACHE:-~/.cache/pacsflow}/images
images: node-deps
	scripts/images.sh archive

## kube-scheduler, kubelet and kube-proxy built from the Go module proxy into the control plane's cache (nice 19, -p 1)
node-bins:
	scripts/cluster.sh node-bins

.PHONY: node-peers
## The independent DIMSE peer playing the modality's MPPS SCU: npm dcmjs-dimse into the cache (tests/peers/modality.js)
node-peers:
	scripts/install-node-peers.sh

.PHONY: hl7-peer
## The independent HL7 v2 peer: HAPI HL7v2 2.6.0 jars from Maven Central into the cache (sha1-checked);
## tests/peers/hapi/Peer.java runs on them (Java 17)
hl7-peer:
	scripts/fetch-hl7-peer.sh

.PHONY: identity-peer
## The hospital identity provider for the single sign-on tests: Keycloak (keycloak-quarkus-dist) from Maven Central
## into the cache (sha1-checked); tests/peers/keycloak.py runs it in dev mode (Java 21+)
identity-peer:
	scripts/fetch-identity-peer.sh

.PHONY: triton-venv triton
## Triton's own venv (.venv-triton): nvidia-pytriton's bundled tritonserver 2.51 + ONNX Runtime (numpy<2)
triton-venv:
	scripts/triton-venv.sh

## Real tritonserver in the foreground on loopback (TRITON_HTTP_PORT/TRITON_GRPC_PORT/TRITON_METRICS_PORT,
## default 8000/8001/8002) serving model_repository/ rendered for the CPU python backend (docs/triton.md)
triton: venv triton-venv
	$(VENV)/bin/pacsflow model-repository render --target cpu-python --source model_repository --out build/triton/models
	scripts/triton.sh build/triton/models
