# gcvit-nb: the two commands of README.md, `make book` and `make test`, each doing its own setup.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
BIN := $(VENV)/bin
CONSTRAINTS := .ci/constraints.txt
BACKENDS := tensorflow jax torch
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED := 0

FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data book-deps export book test test-hygiene test-units test-book test-readme test-colab test-gpu clean-nbs clean

## setup: create .venv if missing and install the package editable with its dev extras (idempotent)
$(VENV)/.installed: settings.ini setup.py pyproject.toml $(CONSTRAINTS)
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	@touch $@
setup: $(VENV)/.installed

## data: the offline photos the book and tests train on (Debian's dataset-fashion-mnist; installed when root)
data:
	@test -f $(FASHION_MNIST) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || { echo "Fashion-MNIST is needed offline: sudo apt-get install dataset-fashion-mnist"; exit 1; }

## book-deps: MathJax served from the book itself, so equations render offline (Debian's libjs-mathjax; installed when root)
MATHJAX := /usr/share/javascript/mathjax/MathJax.js
book-deps:
	@test -f $(MATHJAX) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjs-mathjax >/dev/null; } || echo "warning: no local MathJax (sudo apt-get install libjs-mathjax): equations will load from a CDN"

## export: notebooks -> gcvit_nb/ (nbdev)
export: setup
	$(BIN)/nbdev_export

## book: execute every chapter and build the HTML book (profile from the environment: GCVIT_SMOKE=1, cpu or gpu)
book: export data book-deps
	$(BIN)/jupyter-book build . --path-output _build/book
	@echo "Book built: $(abspath _build/book/_build/html/index.html)"

## test: hygiene, unit tests on three backends, nbval on every notebook (smoke, as Colab), the book as
## `make book` builds it (default profile) checked in Chromium, and README.md run as printed
test: test-hygiene test-units test-colab test-book test-readme
	@echo "All checks passed."

test-hygiene: setup
	@echo "== make $@: started"
	$(VPY) tools/check_notebooks.py

test-units: setup data
	@echo "== make $@: started"
	@for backend in $(BACKENDS); do \
	  echo "== pytest with KERAS_BACKEND=$$backend"; \
	  rc=0; KERAS_BACKEND=$$backend $(VPY) -m pytest -q -p no:cacheprovider --durations=12 tests || rc=$$?; \
	  if [ $$rc = 5 ]; then echo "pytest collected no tests under $$backend: that is a failure"; exit 1; fi; \
	  [ $$rc = 0 ] || exit $$rc; \
	done

## test-colab: every notebook through nbval at smoke sizes, as Colab runs it (tools/check_colab.py: the
## installed wheel, no source tree, no Debian datasets, hub and tfds on loopback, the gpu code path)
test-colab: setup data
	@echo "== make $@: started"
	$(VPY) tools/check_colab.py

## test-book: the user's `make book` (whatever profile the environment picks: cpu here), then its HTML
## checked and two pages opened in Chromium
test-book: setup
	@echo "== make $@: started"
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || { echo "Chromium is needed: apt-get install chromium"; exit 1; }
	$(MAKE) book
	$(VPY) tools/check_book.py _build/book/_build/html --screenshots _build/screenshots

## test-readme: every block of README.md, as printed, in fresh venvs outside the checkout (the
## install proof: `pip install "gcvit-nb[jax] @ git+..."` of this checkout's HEAD; see the script)
test-readme: setup
	@echo "== make $@: started"
	$(VPY) tools/check_readme.py

## test-gpu: the GPU run (.ci/run-gpu): CUDA builds in .venv-gpu, GPU unit tests and every notebook per backend
test-gpu:
	bash .ci/run-gpu

clean-nbs: setup
	$(BIN)/nbdev_clean

clean:
	rm -rf _build
