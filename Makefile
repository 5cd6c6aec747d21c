# Two commands do everything on a fresh machine (Python 3.11 + pip):
#   make demo   install, then run the quick synthetic study (sparseinfer reproduce --preset quick)
#   make test   install, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= results/quick

.PHONY: install demo test lint clean

$(BIN)/sparseinfer: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(BIN)/sparseinfer

install: $(BIN)/sparseinfer

demo: install
	$(BIN)/sparseinfer reproduce all --preset quick --out $(OUT)

test: install
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -n 2 tests

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) results .pytest_cache
