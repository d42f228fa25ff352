# Makefile - one entry point for everything: a fresh machine needs only
# `make demo` or `make test`. Everything is installed into .venv here.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.ppc-deps
SRC := $(wildcard src/core/*.c src/core/*.h src/py/*.c src/py/*.h)
EXT := pp/_ppc$(shell $(PY) -c "import sysconfig;print(sysconfig.get_config_var('EXT_SUFFIX'))")
CC ?= cc
CWARN := -std=c11 -Wall -Wextra -Werror
CTEST_SRC := $(wildcard tests/c/test_*.c)
CORE_SRC := $(wildcard src/core/*.c)

.PHONY: all venv build demo demo-cluster test test-c test-py test-asan bench clean

all: build

$(STAMP):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q setuptools wheel pytest pytest-timeout pillow numpy
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
	$(CC) $(CWARN) -O1 -g -Isrc/core -o $@ $< $(CORE_SRC) -lpthread -lcrypto
	$(CC) $(CWARN) -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	  -fno-sanitize-recover=all -Isrc/core -o $@-asan $< $(CORE_SRC) -lpthread -lcrypto
build/ctest/echo_worker: tests/c/echo_worker.c $(CORE_SRC)
	@mkdir -p build/ctest
	$(CC) $(CWARN) -O1 -g -Isrc/core -o $@ $< src/core/buf.c src/core/frame.c

test-c: build/ctest/echo_worker $(patsubst tests/c/%.c,build/ctest/%,$(CTEST_SRC))
	@set -e; for t in $(patsubst tests/c/%.c,build/ctest/%,$(CTEST_SRC)); do \
	  echo "== $$t"; PPC_ECHO_WORKER=build/ctest/echo_worker $$t; \
	  echo "== $$t (asan+ubsan)"; ASAN_OPTIONS=detect_leaks=1 PPC_ECHO_WORKER=build/ctest/echo_worker $$t-asan; \
	done

test-py: build
	$(VPY) -m pytest -q -p no:cacheprovider tests

# The extension itself under ASan + UBSan, driven by a subset of pytest.
test-asan: $(STAMP)
	rm -rf build/asan && mkdir -p build/asan
	PPC_EXTRA_CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	PPC_EXTRA_LDFLAGS="-fsanitize=address,undefined" \
	  $(VPY) setup.py -q build_ext --build-lib build/asan --build-temp build/asan/tmp
	cp -r pp/*.py build/asan/pp/
	LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 PYTHONPATH=build/asan \
	  $(VPY) -P -m pytest -q -p no:cacheprovider -m "not slow" tests/test_asan_subset.py

-include fuzz/fuzz.mk

test: build test-c test-py test-asan fuzz-smoke

bench: build
	bash bench/run.sh

clean:
	rm -rf build pp/_ppc*.so *.egg-info
