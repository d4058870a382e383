# Two entry points do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
DATA ?= ../shared/data
# torch is pinned to the local CPU build through constraints.txt (see README).
INSTALL = $(PYTHON) -m pip install --quiet -c constraints.txt -e ".[export,dev,ray,serve-client]"

include serve.mk

.PHONY: setup demo test lint
setup:
	$(INSTALL)

# The whole edge pipeline on the shipped cmgi default: export -> calibrate -> INT8 -> TensorRT readiness
# (doctor) -> check every variant against PyTorch float on held-out clips -> predict a few; one closing table.
# Uses the full TESS corpus under $(DATA) when it is there, else the held-out clips shipped in edgeser/shipped/demo/tess/.
demo: setup
	$(PYTHON) -m edgeser.cli demo --data $(DATA)

# Style and types (ruff; mypy, strict on the lean runtime), then the tests.
lint:
	$(PYTHON) -m ruff check edgeser tests tools
	$(PYTHON) -m mypy

test: setup serve-env lint
	$(PYTHON) -m pytest -q
