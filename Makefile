# The two commands: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The package accepts torch>=2.4; here we pin the CPU wheel that the machine keeps on disk,
# because an unpinned torch pulls a multi-GB CUDA build. Elsewhere: make demo TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-fast install install-all install-test system-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	touch $@

# The core (train, generate, export) and its extras: pyproject.toml lists which brings what.
$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-all: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e ".[all]"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-all: $(VENV)/.installed-all
install-test: $(VENV)/.installed-test

# The demo explains a prediction, audits privacy and ends with the report card: every extra.
demo: $(VENV)/.installed-all
	$(VENV)/bin/candorlm demo

# Browser tests (the chat page, explain.html, the report card) drive Debian's Chromium: install
# chromium and chromium-driver when they are missing and apt can (as root, as in CI). Without them
# the tests that need them skip and say why. No CJK font: candorlm brings its own (pip
# noto-cjk-sans-jp-regular), and a test checks that Chinese renders without any system CJK font.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing$$missing"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $$missing >/dev/null; } || echo "could not install$$missing: the tests that need them will skip"; \
	else echo "missing$$missing (installing needs root and apt): the tests that need them will skip"; fi

# Two workers, each module in one of them (its fixtures built once): 1,201 s of tests take 700 s on
# 2 cores, since much of a test's time is a subprocess importing torch, or waiting on one.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadscope

test: $(VENV)/.installed-test system-deps
	$(PYTEST)

# The tests not marked slow (none trains a model or starts the command line): a quick check while working.
test-fast: $(VENV)/.installed-test
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) runs data .pytest_cache
