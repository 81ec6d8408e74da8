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

test: venv system-deps lint
	$(VENV)/bin/pytest

demo: venv system-deps
	$(PY) -m pacsflow_router.demo

bench: venv system-deps
	$(PY) -m bench
