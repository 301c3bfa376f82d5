# The README's commands. `make run` sets up and materializes the whole graph on the tiny profile;
# `make test` runs the suite; `make ui` serves the Dagster UI and the MLflow UI on localhost.
PYTHON ?= python3
VENV ?= .venv
# Torch is installed first and on its own: the CPU build here (it lies on disk), or pass your CUDA
# build, e.g. `make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX=<your CUDA wheel index>`.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
# The lock: every package version of a fresh install that CI tested (`pip freeze`), per Python minor
# version. Where one exists for your Python, setup installs exactly those versions, so a package
# release changes nothing, not even the default corpus (it reads the installed packages'
# descriptions). Without one pip resolves the ranges in pyproject.toml; `make lock` writes it.
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
LOCK ?= infra/lock/python$(PYVER).txt
LOCKED := $(if $(wildcard $(LOCK)),-c $(LOCK))
DAGSTER_PORT ?= 3000
MLFLOW_PORT ?= 5000

.PHONY: setup run test ui clean lock
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(wildcard $(LOCK))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip $(LOCKED)
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev]' $(LOCKED)
	touch $@

# A fresh venv resolved from pyproject.toml alone, frozen into $(LOCK). Torch stays out: its build
# (CPU or CUDA) is the machine's choice, made above.
LOCK_VENV ?= /tmp/seekflow-lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(LOCK_VENV)/bin/python -m pip install -q -e '.[dev]'
	mkdir -p $(dir $(LOCK))
	{ echo "# make lock, Python $(PYVER), $$(date -u +%F): pip freeze of a fresh install (torch and seekflow left out)"; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all | grep -v -i -e '^#' -e '^-e ' -e '^torch==' -e '^seekflow'; } > $(LOCK)
	rm -rf $(LOCK_VENV)

run: setup
	$(BIN)/python -m pipelines.run

test: setup
	$(BIN)/python -m pytest -q

ui: setup
	$(BIN)/python -m pipelines.ui --dagster-port $(DAGSTER_PORT) --mlflow-port $(MLFLOW_PORT)

clean:
	rm -rf .seekflow
