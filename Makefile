# One command from clone to a running app (`make demo`) or a green test run (`make test`).
# `make install` is idempotent: it does nothing when requirements.txt has not changed since the last install.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := $(shell grep -E '^torch==' requirements.txt)

.PHONY: install demo test test-all lint format bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and alone: with it installed, nothing else can pull a CUDA build.
	$(PY) -m pip install --disable-pip-version-check -q "$(TORCH_PIN)"
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Offline, with the shared data and tokenizer checked out beside the project (../shared, as in CI), use them unless
# FTRAG_DATA / FTRAG_TOKENIZER say otherwise.
SHARED ?= $(abspath ../shared)

demo: install
	@if [ -z "$$FTRAG_DATA" ] && [ -d "$(SHARED)/data/tweet_sentiment_extraction" ]; then \
		export FTRAG_DATA="$(SHARED)/data/tweet_sentiment_extraction"; fi; \
	if [ -z "$$FTRAG_TOKENIZER" ] && [ -d "$(SHARED)/models/gpt2-tokenizer" ]; then \
		export FTRAG_TOKENIZER="$(SHARED)/models/gpt2-tokenizer"; fi; \
	GRADIO_ANALYTICS_ENABLED=$${GRADIO_ANALYTICS_ENABLED:-False} $(PY) app.py $(ARGS)

# The suite runs in one process per CPU (pytest-xdist, a test file per process at a time, one torch thread each);
# JOBS=0 runs it in this process alone.
JOBS ?= auto

test: install
	$(PY) -m pytest -n $(JOBS) --dist loadfile $(ARGS)

test-all: install
	$(PY) -m pytest -n $(JOBS) --dist loadfile -m "" $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	@set -e; for script in $(filter-out bench/common.py bench/__init__.py,$(wildcard bench/*.py)); do echo "== $$script"; $(PY) $$script; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
