# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
ARGS   ?=

.PHONY: run test install install-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,launchers]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

## Run the default analysis on the bundled demo dataset and print where the results are
## (overwrite=true: running it again replaces the previous demo run instead of refusing).
run: $(VENV)/.installed
	$(PY) -m runner overwrite=true $(ARGS)

## Install the test extras and run the test suite (two processes, one per core; each test file stays in one).
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
