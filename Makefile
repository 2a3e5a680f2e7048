# The two commands: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The package accepts torch>=2.4; here we pin the CPU wheel that the machine keeps on disk,
# because an unpinned torch pulls a multi-GB CUDA build. Elsewhere: make demo TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install install-test chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(VENV)/bin/candorlm demo

# The chat page's browser test drives Debian's Chromium: install it when it is missing and apt can
# (as root, as in CI). Without it that one test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "could not install chromium: the browser test will skip"

test: $(VENV)/.installed-test chromium
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs data .pytest_cache
