# ccnet-edu: build the book and run every check.
#   make book       build the rendered book into _build/html (strict: warnings are errors)
#   make test       ruff, the C++/CUDA op build, unit tests, the op tests under sanitizers and
#                   another -mtune, nbval, strict book build, render test
#   make lab        JupyterLab on notebooks/
#   make notebooks  re-execute every notebook in place, storing outputs and widget state
#   make lock       re-resolve the dependencies and rewrite constraints.txt
#   make clean      remove build output and caches
# The first target that needs it creates .venv and installs the project into it; the install is
# redone only when pyproject.toml or constraints.txt changes (a stamp file in .venv records it).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
BOOK_HTML := _build/html

# The fused operator builds for CUDA as well when a CUDA toolkit is found.
ifeq ($(origin CUDA_HOME),undefined)
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME := /usr/local/cuda
endif
endif
# Jupyter kernels under a debugger-enabled ipykernel warn about frozen modules without this.
export PYDEVD_DISABLE_FILE_VALIDATION := 1

# pytest exits 5 when it collected no test: that is a failure here, never a silent success.
# $(call pytest,ARGS...) runs pytest and explains exit code 5; any other failure passes through.
define pytest
echo "pytest $(1)"; rc=0; $(PY) -m pytest $(1) || rc=$$?; \
if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests for: $(1)" >&2; fi; \
exit $$rc
endef

.PHONY: help venv book book-strict book-assets check-toc test lint ops ops-sanitize ops-other-tune \
        unit nbval render \
        notebooks lab lock clean

help:  # the comment block at the top of this file, up to its first non-comment line
	@awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' Makefile

# ---------------------------------------------------------------- environment
$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# Every install is constrained by the lock file, so a fresh machine gets the versions the
# stored notebook outputs were made with; `make lock` refreshes it (see the README).
LOCK     ?= constraints.txt
EXTRAS   := book,test,export
PIP      := $(PY) -m pip install --disable-pip-version-check -c $(LOCK)

$(VENV)/.installed-book-test: pyproject.toml $(LOCK) | $(BIN)/activate
	$(PIP) -e ".[$(EXTRAS)]"
	touch $@

$(VENV)/.installed-lab: pyproject.toml $(LOCK) | $(BIN)/activate
	$(PIP) -e ".[$(EXTRAS),lab]"
	touch $@ $(VENV)/.installed-book-test

venv: $(VENV)/.installed-book-test

# Resolve the project's dependencies afresh in a throw-away environment and pin what it got.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --disable-pip-version-check -q ".[$(EXTRAS),lab]"
	{ echo "# The versions \`make\` installs (pip -c). Made by \`make lock\` on $$(date -u +%F) with"; \
	  echo "# $$(.lock-venv/bin/python --version) on $$(uname -m); edit pyproject.toml, not this file."; \
	  .lock-venv/bin/python -m pip freeze --exclude ccnet-edu --exclude pip; } > $(LOCK)
	rm -rf .lock-venv build
	@echo "wrote $(LOCK): review the diff, re-run 'make notebooks' if versions changed, commit both"

# ---------------------------------------------------------------- book
book-assets:
	tools/fetch_book_assets.sh

check-toc: venv
	$(PY) tools/check_toc.py

# Incremental build for readers and authors.
book: venv book-assets check-toc
	$(BIN)/jupyter-book build . -W --keep-going
	@echo "The book is in $(BOOK_HTML)/index.html"

# Full rebuild: an incremental build does not repeat warnings of unchanged pages.
book-strict: venv book-assets check-toc
	$(BIN)/jupyter-book build . -W --keep-going --all 2>&1 | tee _build.log
	@n=$$(grep -c 'WARNING:' _build.log || true); echo "book build warnings: $$n"; \
	if [ "$$n" != 0 ]; then exit 1; fi

# ---------------------------------------------------------------- tests
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ops: venv
	$(PY) -m ccnet_edu.ops build

# The operator tests once more against two other builds of the CPU library, each in its own
# cache directory: under AddressSanitizer + UndefinedBehaviorSanitizer (any report aborts the
# run; the sanitizer runtimes are preloaded because python itself is not instrumented), and
# with a non-generic -mtune (a tuning that once miscompiled a dtype choice), so that a
# code-generation-sensitive bug shows on any build machine.
# The sanitized build is optimised at -O1 (appended after the library's -O3; the last -O wins),
# as AddressSanitizer's documentation recommends; g++ compiles the instrumented kernels many
# times faster than at -O3 (the measurement is in benchmarks/results/build-times.md).
SAN_CFLAGS  := -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g
CXX_FOR_SAN := $(or $(CXX),c++)
ifeq ($(shell uname -m),x86_64)
OTHER_TUNE  := -mtune=rocketlake
else
OTHER_TUNE  := -mtune=neoverse-n1
endif
OPS_TESTS   := tests/test_ops.py -p no:cacheprovider -q -k "not wheel_install"

ops-sanitize: venv
	@export CCNET_EDU_BUILD_DIR=$(CURDIR)/.cache/ops-sanitize \
	    CCNET_EDU_EXTRA_CFLAGS="$(SAN_CFLAGS)" \
	    CCNET_EDU_EXTRA_LDFLAGS="-fsanitize=address,undefined" \
	    ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    LD_PRELOAD="$$($(CXX_FOR_SAN) -print-file-name=libasan.so) $$($(CXX_FOR_SAN) -print-file-name=libubsan.so)"; \
	$(PY) -m ccnet_edu.ops build --no-cuda; \
	$(call pytest,$(OPS_TESTS))

ops-other-tune: venv
	@export CCNET_EDU_BUILD_DIR=$(CURDIR)/.cache/ops-other-tune \
	    CCNET_EDU_EXTRA_CFLAGS="$(OTHER_TUNE)"; \
	$(PY) -m ccnet_edu.ops build --no-cuda; \
	$(call pytest,$(OPS_TESTS))

unit: venv
	@$(call pytest,tests/ --ignore=tests/test_book_render.py -p no:cacheprovider)

nbval: venv
	@$(call pytest,--nbval --nbval-current-env -p no:cacheprovider notebooks/)

# Needs the built book and Chromium; in `make test` a missing one is an error, not a skip.
render: venv
	@export BOOK_RENDER_REQUIRED=1; $(call pytest,tests/test_book_render.py -p no:cacheprovider -v)

test: venv
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory ops
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory ops-sanitize
	$(MAKE) --no-print-directory ops-other-tune
	$(MAKE) --no-print-directory nbval
	$(MAKE) --no-print-directory book-strict
	$(MAKE) --no-print-directory render

# ---------------------------------------------------------------- GPU check
# The wheels the GPU machine lacks for benchmarks/gpu_check.sh's notebook step (nbval and
# its Jupyter stack, CPython 3.12, manylinux x86-64), into an ignored folder that a device
# call carries (benchmarks/gpu_notes.md); prints their total size, which must stay well
# inside the 64 MiB a call carries.
GPU_WHEELS ?= .gpu-wheels
.PHONY: gpu-wheels
gpu-wheels: venv
	$(PY) benchmarks/gpu_check.py wheels --dest $(GPU_WHEELS) --constraints $(LOCK)

# ---------------------------------------------------------------- notebooks
notebooks: venv
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.store_widget_state=True \
	    --ExecutePreprocessor.timeout=600 $(NOTEBOOKS)

# Jupyter refuses to run as root without --allow-root (containers and CI machines run as root).
lab: $(VENV)/.installed-lab
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf _build _build.log .cache book/_static/vendor .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf *.egg-info build
