# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   # creates .venv, installs distgan, trains on the built-in demo faces (CPU, a few minutes)
#   make test   # creates .venv, installs distgan[dev], runs the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup setup-dev demo test bench clean constraints

setup: $(VENV)/.installed          # what distgan needs to run
setup-dev: $(VENV)/.installed-dev  # and what its tests need

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

constraints:  # the tested versions, from the dev environment (commit the result)
	{ sed -n 1,3p constraints.txt; $(BIN)/pip freeze --exclude-editable; } > constraints.tmp && mv constraints.tmp constraints.txt

demo: setup
	$(BIN)/python -m distgan.train --config configs/demo.yaml $(ARGS)

test: setup-dev
	$(BIN)/python -m pytest $(ARGS)

bench: setup  # training speed against a plain loop (docs/benchmarks.md), then the loader formats (docs/data.md)
	$(BIN)/python -m distgan.bench $(ARGS)
	$(BIN)/python benchmarks/loader.py

clean:
	rm -rf $(VENV) runs
