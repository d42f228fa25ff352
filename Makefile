# Makefile - one entry point for everything: a fresh machine needs only
# `make demo` or `make test`. `make build`/`make demo` install into .venv
# here (the build users run: no -Werror); `make test` also runs the pytest
# suite on every CPython 3.9-3.13 it finds (pyenv's, else python3.X on
# PATH), each in its own build/venv-3.X with the extension built with
# -Werror, and says which it skipped and why.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# bump DEPS_REV when the dependency lists change: every venv reinstalls
DEPS_REV := 4
STAMP := $(VENV)/.ppc-deps-$(DEPS_REV)
SRC := $(wildcard src/core/*.c src/core/*.h src/py/*.c src/py/*.h)
EXT := pp/_ppc$(shell $(PY) -c "import sysconfig;print(sysconfig.get_config_var('EXT_SUFFIX'))")
CC ?= cc
CWARN := -std=c11 -Wall -Wextra -Werror
CTEST_SRC := $(wildcard tests/c/test_*.c)
CORE_SRC := $(wildcard src/core/*.c)
# the interpreters `make test` runs the pytest suite on, and what they need
PYVERSIONS ?= 3.9 3.10 3.11 3.12 3.13
PYENV_ROOT ?= $(or $(shell pyenv root 2>/dev/null),$(HOME)/.pyenv)
TEST_DEPS := pytest pytest-timeout numpy pillow prometheus_client joblib scikit-learn tqdm
# Debian packages the build needs (tools/sysdeps.sh installs the missing ones)
APT_BUILD := build-essential python3-dev python3-venv libssl-dev libmicrohttpd-dev
# ... and those only the tests need
APT_TEST := openssl slurm-wlm munge openmpi-bin libopenmpi-dev iproute2 chromium
# warnings are errors in make test and CI only (setup.py reads PPC_EXTRA_CFLAGS)
TEST_CFLAGS := -Werror

.PHONY: all sysdeps-test venv build demo demo-cluster test test-c test-py test-py-one test-packaging test-asan \
	bench clean

all: build

$(STAMP):
	sh tools/sysdeps.sh $(APT_BUILD)
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q --upgrade setuptools wheel $(TEST_DEPS)
	touch $@

venv: $(STAMP)

$(EXT): $(STAMP) $(SRC) setup.py
	$(VPY) setup.py -q build_ext --inplace
	@test -x $(VENV)/bin/ppserver || $(VPY) -m pip install -q --no-build-isolation -e .

build: $(EXT)

demo: build
	$(VPY) examples/sum_primes.py

# A ppserver on loopback with one worker, and sum_primes on one local worker
# plus that node: pp's statistics table shows a row per node.
demo-cluster: build
	@set -e; export PP_SECRET=$$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n'); \
	PORT=$$($(VPY) -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"); \
	$(VPY) -m pp.ppserver -i 127.0.0.1 -p $$PORT -w 1 & PID=$$!; \
	trap "kill $$PID 2>/dev/null; wait $$PID 2>/dev/null" EXIT; sleep 0.5; \
	$(VPY) examples/sum_primes.py 1 127.0.0.1:$$PORT

# C unit tests of the plain-C engine, plain and under ASan + UBSan.
build/ctest/%: tests/c/%.c $(CORE_SRC) $(wildcard src/core/*.h tests/c/*.h) tests/c/echo_worker.c
	@mkdir -p build/ctest
	$(CC) $(CWARN) -O1 -g -Isrc/core -o $@ $< $(CORE_SRC) -lpthread -lssl -lcrypto
	$(CC) $(CWARN) -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	  -fno-sanitize-recover=all -Isrc/core -o $@-asan $< $(CORE_SRC) -lpthread -lssl -lcrypto
build/ctest/echo_worker: tests/c/echo_worker.c $(CORE_SRC)
	@mkdir -p build/ctest
	$(CC) $(CWARN) -O1 -g -Isrc/core -o $@ $< src/core/buf.c src/core/frame.c

test-c: build/ctest/echo_worker $(patsubst tests/c/%.c,build/ctest/%,$(CTEST_SRC))
	@set -e; for t in $(patsubst tests/c/%.c,build/ctest/%,$(CTEST_SRC)); do \
	  echo "== $$t"; PPC_ECHO_WORKER=build/ctest/echo_worker $$t; \
	  echo "== $$t (asan+ubsan)"; ASAN_OPTIONS=detect_leaks=1 PPC_ECHO_WORKER=build/ctest/echo_worker $$t-asan; \
	done

# The pytest suite on each interpreter of PYVERSIONS found; one that is
# missing, or lacks Python.h or venv, is skipped and named. Every one found
# runs even when an earlier one fails; the run fails if any did.
test-py:
	@ran=""; skipped=""; failed=""; \
	for v in $(PYVERSIONS); do \
	  py=""; \
	  for c in $(PYENV_ROOT)/versions/$$v.[0-9]*/bin/python3 $$(command -v python$$v); do \
	    case $$c in *t/bin/python3) continue;; esac; \
	    if [ -x "$$c" ]; then py=$$c; break; fi; \
	  done; \
	  if [ -z "$$py" ]; then skipped="$$skipped $$v (not found in $(PYENV_ROOT)/versions nor as python$$v);"; continue; fi; \
	  if ! $$py -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
	    skipped="$$skipped $$v ($$py has no Python.h: install python$$v-dev);"; continue; fi; \
	  if ! $$py -c 'import venv, ensurepip' 2>/dev/null; then \
	    skipped="$$skipped $$v ($$py has no venv/ensurepip: install python$$v-venv);"; continue; fi; \
	  echo "== pytest on CPython $$v ($$py)"; t0=$$(date +%s); \
	  if $(MAKE) --no-print-directory test-py-one V=$$v PYV=$$py; then \
	    ran="$$ran $$v ($$(( $$(date +%s) - t0 )) s)"; \
	  else failed="$$failed $$v"; fi; \
	done; \
	echo "== pytest ran on:$${ran:- none}"; \
	echo "== pytest skipped:$${skipped:- none}"; \
	if [ -n "$$failed" ]; then echo "== pytest FAILED on:$$failed"; exit 1; fi; \
	if [ -z "$$ran" ]; then echo "== no CPython of $(PYVERSIONS) found"; exit 1; fi

# One interpreter: make test-py-one V=3.12 PYV=/path/to/python3.12
MV := build/venv-$(V)
$(MV)/.ppc-deps-$(DEPS_REV):
	rm -rf $(MV)
	$(PYV) -m venv $(MV)
	$(MV)/bin/python -m pip install -q --upgrade pip
	$(MV)/bin/python -m pip install -q --upgrade setuptools wheel $(TEST_DEPS)
	touch $@
$(MV)/.ppc-ext: $(MV)/.ppc-deps-$(DEPS_REV) $(SRC) setup.py
	PPC_EXTRA_CFLAGS="$(TEST_CFLAGS)" $(MV)/bin/python setup.py -q build_ext --inplace --force \
	  --build-temp $(MV)/tmp
	touch $@
test-py-one: $(MV)/.ppc-ext
	$(MV)/bin/python -m pytest -q -rs -p no:cacheprovider --ignore=tests/test_packaging.py tests

# pip install . and a wheel built from the sdist, each in a fresh venv (once)
test-packaging: build
	$(VPY) -m pytest -q -p no:cacheprovider tests/test_packaging.py

# The extension itself under ASan + UBSan, driven by a subset of pytest.
test-asan: $(STAMP)
	rm -rf build/asan && mkdir -p build/asan
	PPC_EXTRA_CFLAGS="$(TEST_CFLAGS) -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	PPC_EXTRA_LDFLAGS="-fsanitize=address,undefined" \
	  $(VPY) setup.py -q build_ext --build-lib build/asan --build-temp build/asan/tmp
	cp -r pp/*.py build/asan/pp/
	LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 PYTHONPATH=build/asan \
	  $(VPY) -P -m pytest -q -p no:cacheprovider -m "not slow" tests/test_asan_subset.py

-include fuzz/fuzz.mk

sysdeps-test:
	sh tools/sysdeps.sh $(APT_BUILD) $(APT_TEST)

test: sysdeps-test build test-c test-py test-packaging test-asan fuzz-smoke

bench: build
	bash bench/run.sh

clean:
	rm -rf build dist pp/_ppc*.so *.egg-info
