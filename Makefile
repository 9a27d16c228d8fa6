# Two entry points (see README): `make demo` and `make test`; `make figures` regenerates figures/.
# Both create .venv when it is missing and are safe to run twice.
PYTHON ?= python3
VENV   ?= .venv
# CPU build by default where one is available; GPU users: make setup TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ralbook-installed

.PHONY: setup demo figures test clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test,video]"
	touch $(STAMP)

demo: setup
	$(PY) -m ralbook demo --out outputs/demo

# Rewrites the committed figures/ (PNGs, results.json, RESULTS.md) from a fresh demo run under outputs/demo.
figures: setup
	$(PY) -m ralbook figures --out outputs/demo --retrain

test: setup
	$(PY) -m pytest -q

clean-runs:
	rm -rf runs outputs
