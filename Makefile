# Self-documenting: `make help` lists the targets with their comments.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help run test test-fast bench summary fashion-mnist tex chromium clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,launchers,tracking]'
	touch $@

run: $(STAMP)  ## set up the venv, then train the default run (mnist5k, < 1 min on 2 cores); ARGS="..." adds overrides
	$(PY) -m runner $(ARGS)

test: $(STAMP) fashion-mnist tex chromium  ## set up the venv, then ruff (pyflakes rules, lines <= 120) and the whole test suite
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(ARGS)

test-fast: $(STAMP)  ## the suite without the slow end-to-end tests
	$(PY) -m pytest -m "not slow" $(ARGS)

bench: $(STAMP) fashion-mnist  ## time the runner's loop, every pooling layer and every norm block; writes results/bench.json
	$(PY) -m runner.bench $(ARGS)

summary: $(STAMP)  ## statistics over seeds, paired comparisons, ranks, plots and report.md for results/; ARGS="--baseline pooling=max"
	$(PY) -m runner.summary $(ARGS)

fashion-mnist:  ## install Debian's dataset-fashion-mnist (full Fashion-MNIST as IDX files) if it is missing
	@test -f $(FMNIST) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  ($$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist) >/dev/null \
	  || echo "note: could not install dataset-fashion-mnist; tests that need it will skip"; }

tex:  ## install Debian's TeX Live (pdflatex with booktabs) if it is missing: the test that compiles --format tex needs it
	@command -v pdflatex >/dev/null && kpsewhich booktabs.sty >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  ($$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends texlive-latex-base \
	    texlive-latex-recommended) >/dev/null \
	  || echo "note: could not install TeX Live; the LaTeX compile test will skip"; }

chromium:  ## install Debian's chromium if it is missing: the test that renders report.html headless needs it
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  ($$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends chromium) >/dev/null \
	  || echo "note: could not install chromium; the report.html rendering test will skip"; }

clean:  ## remove the venv and caches (results/ and data/ are kept)
	rm -rf $(VENV) .pytest_cache
