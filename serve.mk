# Serving (issue 15): the separate environment `edgeser serve` and its tests run in. nvidia-pytriton pins
# numpy < 2 while the main environment has numpy 2, so the server gets its own virtual environment, cached in
# .venv-serve/ (ignored by git) and rebuilt when pyproject.toml or constraints.txt change.
SERVE_ENV ?= .venv-serve

$(SERVE_ENV)/.built: pyproject.toml constraints.txt
	rm -rf $(SERVE_ENV)
	$(PYTHON) -m venv $(SERVE_ENV)
	$(SERVE_ENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[serve]"
	touch $@

.PHONY: serve-env
serve-env: $(SERVE_ENV)/.built
