# fedsim: `make run` and `make test` work on a machine with only Python 3.11 and pip.
# Everything installs into .venv (with the system's site-packages visible, so an
# existing torch build -- CPU or CUDA -- is reused rather than replaced).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed only when no torch is importable. On a CUDA machine install your own torch first.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/default.yaml
RUN_DIR ?= runs/$(basename $(notdir $(CONFIG)))-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install install-test install-docs run test test-slow bench lint docs clean

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test
	@# Chromium for tests/test_report_browser.py; never fails the build (the test skips without it).
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || echo "chromium could not be installed; the browser test will be skipped"

run: install
	$(VENV)/bin/fedsim run $(CONFIG) --out $(RUN_DIR)
	$(VENV)/bin/fedsim report $(RUN_DIR)

# The fast suite (a few minutes on 2 cores); test-slow runs the rest (clusters, the
# browser, killed processes, long runs). CI runs both.
test: install-test
	$(PY) -m pytest -q -m "not slow"

test-slow: install-test
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) bench/engines.py
	$(PY) bench/overhead.py

# The site in docs/ (MkDocs, Material theme) into site/; --strict fails on any warning, and
# the configuration reference is generated from the schema (docs/hooks.py).
docs: install-docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

install-docs: $(VENV)/.installed-docs

lint: install-test
	$(PY) -m pip install --quiet ruff
	$(PY) -m ruff check simulator server clients tests bench
	$(PY) -m ruff format --check simulator server clients tests bench

clean:
	rm -rf $(VENV) .pytest_cache site
