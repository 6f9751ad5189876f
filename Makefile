VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo docs docs-check lint format clean

$(STAMP): pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MAKE) --no-print-directory docs-check
	$(PY) -m pytest

demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/lanczos-optim demo

# The documentation site (mkdocs-material + mkdocstrings) into site/; open site/index.html.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# The strict build `make test` runs: any warning (a broken link, a docstring mkdocstrings cannot
# read) fails it. The site goes to a temporary folder, removed afterwards; the log is shown only
# on failure (not `mkdocs --quiet`, which also hides the warnings that --strict counts).
docs-check: $(STAMP)
	@tmp=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict \
		--site-dir "$$tmp/site" >"$$tmp/log" 2>&1; status=$$?; \
		if [ $$status -ne 0 ]; then cat "$$tmp/log"; fi; rm -rf "$$tmp"; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) results site .pytest_cache .ruff_cache
