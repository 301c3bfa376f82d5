# The README's commands. `make run` sets up and materializes the whole graph on the tiny profile;
# `make test` runs the suite; `make ui` serves the Dagster UI and the MLflow UI on localhost.
PYTHON ?= python3
VENV ?= .venv
# Torch is installed first and on its own: the CPU build here (it lies on disk), or pass your CUDA
# build, e.g. `make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX=<your CUDA wheel index>`.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
DAGSTER_PORT ?= 3000
MLFLOW_PORT ?= 5000

.PHONY: setup run test ui clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: setup
	$(BIN)/python -m pipelines.run

test: setup
	$(BIN)/python -m pytest -q

ui: setup
	$(BIN)/python -m pipelines.ui --dagster-port $(DAGSTER_PORT) --mlflow-port $(MLFLOW_PORT)

clean:
	rm -rf .seekflow
