# ccnet-edu: build the book and run every check.
#   make book       build the rendered book into _build/html (strict: warnings are errors)
#   make pdf        build the book as one PDF, _build/pdf/ccnet-edu.pdf (copied into _build/html)
#   make test       ruff and the output check, the C++/CUDA op build, unit tests, the op tests
#                   under sanitizers and another -mtune, nbval twice (the second time on other
#                   CPU code paths), strict book build, render test, PDF build and check
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
        unit nbval nbval-other-path render pdf pdf-check \
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

# The book as one PDF (tools/build_pdf.py): the single-page HTML build (`--builder singlehtml`,
# from the stored outputs) printed by the headless Chromium that the render test already drives,
# twice, so that the contents get their page numbers. Why not Jupyter Book's LaTeX builder: it
# needs TeX Live (latexmk, texlive-latex-extra, texlive-xetex, texlive-fonts-recommended,
# fonts-freefont-otf: 28 Debian 12 packages, 112 MB to download and 353 MB installed without
# recommends, 245 MB / 700 MB with them, on every fresh CI machine), and LaTeX drops what the HTML
# book shows: the notebooks' HTML tables and widget views fall back to their plain-text repr, SVG
# needs a converter, and the maths would be TeX's rather than the MathJax the render test checks.
# Printing the HTML keeps every output as the book renders it, needs only poppler-utils besides
# (19 MB: the contents' page numbers and the checks) and fetches nothing.
# `make pdf PDF_CHAPTERS=2` builds only the book's own pages and the first two chapters (quick).
PDF_NAME     := ccnet-edu
PDF          := _build/pdf/$(PDF_NAME).pdf
PDF_CHAPTERS ?=

pdf: venv book-assets check-toc
	$(PY) tools/build_pdf.py --out $(PDF) $(if $(PDF_CHAPTERS),--chapters $(PDF_CHAPTERS))
	@# The rendered book links to this copy (book/intro.md).
	mkdir -p $(BOOK_HTML)
	cp $(PDF) $(BOOK_HTML)/.$(PDF_NAME).pdf.tmp && mv $(BOOK_HTML)/.$(PDF_NAME).pdf.tmp $(BOOK_HTML)/$(PDF_NAME).pdf
	@echo "The PDF is $(PDF) ($$(pdfinfo $(PDF) | awk '/^Pages:/ {print $$2}') pages)"

# Builds the whole PDF and reads it back with poppler (tests/test_pdf.py).
pdf-check: pdf
	@export PDF_REQUIRED=1; $(call pytest,tests/test_pdf.py -p no:cacheprovider -v)

# ---------------------------------------------------------------- tests
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PY) tools/check_outputs.py

ops: venv
	$(PY) -m ccnet_edu.ops build

# The operator tests once more against two other builds of the CPU library, each in its own
# cache directory: under AddressSanitizer + UndefinedBehaviorSanitizer (any report aborts the
# run; the sanitizer runtimes are preloaded because python itself is not instrumented), and
# with a non-generic -mtune (a correct program computes the same with any tuning up to
# rounding, so a larger difference is a compiler bug or undefined behaviour), so that a
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
	@$(call pytest,tests/ --ignore=tests/test_book_render.py --ignore=tests/test_pdf.py -p no:cacheprovider)

nbval: venv
	@$(call pytest,--nbval --nbval-current-env -p no:cacheprovider notebooks/)

# nbval once more with PyTorch's CPU kernels on other code paths than the machine picks by
# itself, so that a checked output which depends on the CPU (a rounding error, a float32 sum
# in another order) fails here, on any build machine, and not first on a reader's:
#   ATEN_CPU_CAPABILITY   ATen's own vectorised kernels (softmax, reductions, element-wise
#                         operations): AVX2 on a machine whose default is AVX-512, else the
#                         unvectorised "default" kernels (on AVX2, on other architectures);
#   ONEDNN_MAX_CPU_ISA    oneDNN's convolutions: AVX2 kernels at most, or SSE4.1 on an AVX2
#                         machine;
#   MKL_ENABLE_INSTRUCTIONS  MKL's GEMM on Intel CPUs (MKL ignores it on AMD, where its generic
#                         path runs anyway);
#   OMP_NUM_THREADS=1     one thread instead of all cores: reductions split differently (the
#                         chapters that set their own thread count keep it).
# Each of these was seen to change the bits of a float32 result on an AMD EPYC (AVX-512).
# The run prints the capability ATen uses, and stops if ATEN_CPU_CAPABILITY did not take effect.
CAPABILITY := $(PY) -c "import torch; print(torch.backends.cpu.get_cpu_capability())"

nbval-other-path: venv
	@own=$$($(CAPABILITY)); \
	if [ "$$own" = AVX512 ]; then \
	    export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2; \
	else \
	    export ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2; \
	fi; \
	export OMP_NUM_THREADS=1; \
	now=$$($(CAPABILITY)); \
	echo "nbval on other CPU code paths: ATen $$own -> $$now, ONEDNN_MAX_CPU_ISA=$$ONEDNN_MAX_CPU_ISA," \
	     "MKL_ENABLE_INSTRUCTIONS=$$MKL_ENABLE_INSTRUCTIONS, OMP_NUM_THREADS=1"; \
	if [ "$$now" = "$$own" ] && [ "$$own" != DEFAULT ]; then \
	    echo "error: ATEN_CPU_CAPABILITY=$$ATEN_CPU_CAPABILITY did not change ATen's kernels" >&2; exit 1; \
	fi; \
	$(call pytest,--nbval --nbval-current-env -p no:cacheprovider notebooks/)

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
	$(MAKE) --no-print-directory nbval-other-path
	$(MAKE) --no-print-directory book-strict
	$(MAKE) --no-print-directory render
	$(MAKE) --no-print-directory pdf-check

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
