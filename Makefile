# Every target bootstraps its own virtual environment (.venv) from requirements/lock.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORK_DIR ?= work_dirs/demo

.PHONY: venv test lint demo recipe ops clean

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

# The learning recipe (README "Results"): the default synthetic dataset (10 scenes x 40
# keyframes, 1600x900), RECIPE_CONFIG's full schedule, NDS on the held-out scenes, pictures.
RECIPE_CONFIG ?= projects/configs/bevformerv2/bevformerv2_tiny_320x128_t1-hybrid_12ep.py
recipe: venv
	CONFIG=$(RECIPE_CONFIG) DATAROOT=data/nuscenes/synthetic_default IMAGE_SIZE=1600x900 \
	SAMPLES_PER_SCENE=40 EPOCHS= WORK_DIR=work_dirs/$(basename $(notdir $(RECIPE_CONFIG))) \
	PYTHON=$(BIN)/python bash tools/demo.sh

clean:
	rm -rf $(VENV) build work_dirs
