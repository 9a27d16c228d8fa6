# Two entry points (see README): `make demo` and `make test`; `make figures` regenerates figures/.
# Both create .venv when it is missing and are safe to run twice.
PYTHON ?= python3
VENV   ?= .venv
# The PyTorch build to install (README, "Installing"). Plain torch==VERSION takes what pip finds:
# on PyPI for Linux that is the CUDA build (several GB).
#   CPU only (laptops):  make setup CPU=1
#   a CUDA build:        make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# A TORCH different from the one .venv was set up with uninstalls torch and installs the new one.
TORCH_VERSION ?= 2.13.0
CPU_INDEX     := https://download.pytorch.org/whl/cpu
DEFAULT_TORCH := torch==$(TORCH_VERSION)
ifeq ($(CPU),1)
TORCH ?= $(DEFAULT_TORCH) --index-url $(CPU_INDEX)
else
TORCH ?= $(DEFAULT_TORCH)
endif
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.ralbook-installed
TORCH_SPEC := $(VENV)/.ralbook-torch

.PHONY: setup torch demo figures slides test clean-runs

setup: torch $(STAMP)

# Installs torch when .venv has none, or when TORCH differs from the value recorded in $(TORCH_SPEC).
# A .venv made before the record existed keeps its torch under the default TORCH.
torch:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -f $(TORCH_SPEC) ] && [ "$$(cat $(TORCH_SPEC))" = "$(TORCH)" ]; then :; \
	elif [ ! -f $(TORCH_SPEC) ] && [ "$(TORCH)" = "$(DEFAULT_TORCH)" ] && $(PY) -c "import torch" 2>/dev/null; then \
		echo "$(TORCH)" > $(TORCH_SPEC); \
	else \
		echo "installing PyTorch: $(TORCH)"; \
		$(PY) -m pip install -q --upgrade pip && \
		{ ! $(PY) -c "import torch" 2>/dev/null || $(PY) -m pip uninstall -q -y torch; } && \
		$(PY) -m pip install -q $(TORCH) && echo "$(TORCH)" > $(TORCH_SPEC); \
	fi

$(STAMP): pyproject.toml | torch
	$(PY) -m pip install -q -e ".[test,video]"
	touch $(STAMP)

demo: setup
	$(PY) -m ralbook demo --out outputs/demo

# Rewrites the committed figures/ (PNGs, results.json, RESULTS.md) from a fresh demo run under outputs/demo.
figures: setup
	$(PY) -m ralbook figures --out outputs/demo --retrain $(if $(ROBUSTNESS),--robustness)

# The executed notebooks of `make demo` as self-contained HTML pages (code hidden, figures embedded).
slides: setup
	$(PY) -m ralbook slides --notebooks outputs/demo/notebooks --out outputs/slides

test: setup
	$(PY) -m pytest -q

clean-runs:
	rm -rf runs outputs
