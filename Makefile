# The README's two commands:
#   make book   - set up .venv and build the book into _build/html (executes only stale chapters, in parallel)
#   make test   - set up .venv with the test tools, run the unit tests, then a fresh strict build (quick profile,
#                 every chapter executed, every model trained)
#   make check-pages - read the built book (_build/html) in headless Chromium: figure scales, blocks cut off at the
#                  right, math errors, phone navigation (needs Debian's chromium and npm; no internet after setup)
# Variables: PYTHON (interpreter used to create the venv, default python3), VENV (default .venv),
#            PROFILE for `make book` (auto | quick | full; auto = full on a CUDA machine, quick elsewhere).

PYTHON ?= python3
VENV ?= .venv
PROFILE ?= auto
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: book test unit-test book-test sync check-sync check-pages benchmark clean

book: $(VENV)/.book-deps
	$(BIN)/python tools/build_book.py --profile $(PROFILE)

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q
	$(BIN)/python tools/build_book.py --profile quick --fresh-cache

unit-test: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q

MATHJAX := tools/pages/node_modules/mathjax/es5/tex-mml-chtml.js

check-pages: $(VENV)/.test-deps $(MATHJAX)
	$(BIN)/python tools/check_pages.py --html _build/html --out _build/page-check

$(MATHJAX): tools/pages/package.json tools/pages/package-lock.json
	npm ci --prefix tools/pages --no-audit --no-fund
	touch $@

sync: $(VENV)/.book-deps
	$(BIN)/python tools/sync_notebooks.py

benchmark: $(VENV)/.book-deps
	$(BIN)/python benchmarks/train_steps.py
	$(BIN)/python benchmarks/book_build.py

clean:
	rm -rf _build book/_build

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.book-deps: requirements.txt pyproject.toml | $(BIN)/python
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.test-deps: $(VENV)/.book-deps requirements-test.txt
	$(PIP) install -r requirements-test.txt
	$(PIP) install --no-deps torchcfm==1.0.7
	touch $@
