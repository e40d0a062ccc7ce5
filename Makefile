# Two entry points for a fresh clone with only python3: `make demo` and `make test`.
# Everything is installed into .venv from constraints.txt (exact, pinned versions).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit install clean lock

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,postgres]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bookiji demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# Regenerate constraints.txt from the newest releases that satisfy pyproject.toml.
lock:
	rm -rf /tmp/bookiji-lock && $(PYTHON) -m venv /tmp/bookiji-lock
	/tmp/bookiji-lock/bin/pip install --quiet -e '.[dev,postgres]'
	/tmp/bookiji-lock/bin/pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
