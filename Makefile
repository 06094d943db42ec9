# Every target bootstraps its own virtual environment (.venv) from requirements/lock.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORK_DIR ?= work_dirs/demo

.PHONY: venv test lint demo ops clean

$(STAMP): pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The lock pins the tested stack (torch/torchvision from the local wheel cache when present).
	$(BIN)/pip install --quiet -r requirements/lock.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q tests

# Builds the C++/CUDA operator extension ahead of time (otherwise it is built on first use).
ops: venv
	$(BIN)/python -m ops.build

demo: venv
	WORK_DIR=$(WORK_DIR) PYTHON=$(BIN)/python bash tools/demo.sh

clean:
	rm -rf $(VENV) build work_dirs
