# The two commands: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The package accepts torch>=2.4; here we pin the CPU wheel that the machine keeps on disk,
# because an unpinned torch pulls a multi-GB CUDA build. Elsewhere: make demo TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install install-test cjk-font clean

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

# A CJK font, so that explain/'s PNGs and headless Chromium render Chinese tokens rather than
# empty boxes: Debian's fonts-wqy-zenhei when fontconfig knows no Chinese font (needs root and apt).
cjk-font:
	@fc-list :lang=zh family 2>/dev/null | grep -q . || { command -v apt-get >/dev/null && \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends fonts-wqy-zenhei; } || \
		echo "no Chinese font found and apt-get failed: install one (fonts-wqy-zenhei, fonts-noto-cjk) or set CANDORLM_CJK_FONT"; }

test: $(VENV)/.installed-test cjk-font
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs data .pytest_cache
