# `make demo` and `make test` each set up everything they need on a fresh machine (a venv with a pinned torch).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test benchmark clean weights

$(VENV)/.installed: setup.py requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[test,demo]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

benchmark: $(VENV)/.installed
	$(PY) benchmarks/ldl_map.py

clean:
	rm -rf $(VENV) experiments tb_logger results *.egg-info

weights: $(VENV)/.installed
	$(PY) scripts/download_pretrained.py
