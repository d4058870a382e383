# Two entry points do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
DATA ?= ../shared/data
# torch is pinned to the local CPU build through constraints.txt (see README).
INSTALL = $(PYTHON) -m pip install --quiet -c constraints.txt -e ".[export,dev]"

.PHONY: setup demo test
setup:
	$(INSTALL)

demo: setup
	edgeser data summary emodb:$(DATA)/emodb

test: setup
	$(PYTHON) -m pytest -q
