# Two entry points do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
DATA ?= ../shared/data
# torch is pinned to the local CPU build through constraints.txt (see README).
INSTALL = $(PYTHON) -m pip install --quiet -c constraints.txt -e ".[export,dev,ray,serve-client]"

include serve.mk

.PHONY: setup demo test lint
setup:
	$(INSTALL)

# Export the shipped default (stfnet small, trained on EMO-DB), prove it matches PyTorch on 200 real
# clips, and predict three held-out clips with the torch-free runtime.
demo: setup
	edgeser export --model stfnet --out build/stfnet --force
	edgeser check parity build/stfnet --data emodb:$(DATA)/emodb --limit 200
	edgeser predict build/stfnet $(DATA)/emodb/wav/03a01Wa.flac $(DATA)/emodb/wav/03a05Tc.flac $(DATA)/emodb/wav/03b10Nc.flac

# Style and types (ruff; mypy, strict on the lean runtime), then the tests.
lint:
	$(PYTHON) -m ruff check edgeser tests tools
	$(PYTHON) -m mypy

test: setup serve-env lint
	$(PYTHON) -m pytest -q
