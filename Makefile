# Two entry points do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
DATA ?= ../shared/data
# torch is pinned to the local CPU build through constraints.txt (see README).
# silero-vad's wheel declares torch, but edgeser only reads its ONNX model: --no-deps keeps the lean install lean.
INSTALL = $(PYTHON) -m pip install --quiet -c constraints.txt -e ".[export,dev,ray,serve-client]" \
	&& $(PYTHON) -m pip install --quiet --no-deps silero-vad==6.2.3

include serve.mk

.PHONY: setup demo test lint wheel-check
setup:
	$(INSTALL)

# The whole edge pipeline on the shipped cmgi default: export -> calibrate -> INT8 -> TensorRT readiness
# (doctor) -> check every variant against PyTorch float on held-out clips -> predict a few; one closing table.
# Uses RAVDESS + EMO-DB + TESS under $(DATA) when they are there, else the held-out clips shipped in edgeser/shipped/demo/ravdess/.
demo: setup
	$(PYTHON) -m edgeser.cli demo --data $(DATA)

# Style and types (ruff check, ruff format --check; mypy, strict on every package without torch), then the tests.
lint:
	$(PYTHON) -m ruff check edgeser tests tools
	$(PYTHON) -m ruff format --check edgeser tests tools benchmarks examples
	$(PYTHON) -m mypy

test: setup serve-env lint
	$(PYTHON) -m pytest -q
	$(MAKE) --no-print-directory wheel-check

# The package as users install it: build the wheel, install it into fresh venvs outside the source tree (base
# dependencies only, then the export extra), run `edgeser --help`, `edgeser export --model cmgi`, `edgeser
# predict` and the runtime tests there (tools/check_wheel.sh; about 2 minutes with pip's cache warm).
# WHEEL_DEMO=1 also runs `edgeser demo` from the wheel.
wheel-check:
	PYTHON=$(PYTHON) tools/check_wheel.sh
