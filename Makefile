# Two entry points on a fresh machine with only Python 3.11:
#   make run    set up .venv and run the default pipeline (offline)
#   make test   set up .venv and run the tests
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
BIN := $(VENV)/bin

# the site's scripts from the npm registry, pinned and checked, served by the site itself (no CDN):
# mermaid draws the diagrams, iframe-worker's shim lets search run from the file system
VENDOR := docs/assets/vendor
MERMAID := mermaid 11.17.2 package/dist/mermaid.min.js 581ed7d74bd9048d0e3a91363927d72ef22942d7722546b27f7cc29e35390eb8
IFRAME_WORKER := iframe-worker 1.0.4 package/shim/index.js e8e412dbcfea9b7e31b5ffa288d7b6035915e714c542f4176a0cdbe262fc9609

.PHONY: setup run test lint docs docs-assets clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements.txt requirements-test.txt pyproject.toml
	$(BIN)/pip install --quiet -r requirements-test.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/snakemake --cores $(CORES)

test: setup
	$(BIN)/python -m pytest

lint: setup docs
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/snakemake --lint

# the documentation site under site/: strict, so a broken link, anchor or reference entry fails
docs: setup docs-assets
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-assets: $(VENDOR)/mermaid.min.js $(VENDOR)/iframe-worker-shim.js

$(VENDOR)/mermaid.min.js:
	@bash scripts/npm-vendor.sh $(MERMAID) $@

$(VENDOR)/iframe-worker-shim.js:
	@bash scripts/npm-vendor.sh $(IFRAME_WORKER) $@

clean:
	rm -rf results .snakemake site
