# fuzz/fuzz.mk - make targets that fuzz the engine's wire decoders
# (fuzz/README.md). Included from the top Makefile, or used alone from the
# repository root:  make -f fuzz/fuzz.mk fuzz-smoke
#
#   fuzz-smoke  short bounded run for `make test`: libFuzzer (clang) when it
#               can be had - installing clang with apt-get when missing -,
#               else the gcc standalone driver over the corpus + mutations.
#   fuzz        long libFuzzer run (FUZZ_SECONDS in all), clang installed
#               when missing; fails when libFuzzer cannot be had.
# Both exit non-zero on a crash; the input that crashed is kept under
# build/fuzz/artifacts/. Nothing under fuzz/ is modified.

FUZZ_MK := $(lastword $(MAKEFILE_LIST))
FUZZ_SAVED_GOAL := $(.DEFAULT_GOAL)

FUZZ_TARGETS := fuzz_frames fuzz_handshake fuzz_announce fuzz_tls
# fuzz_tls also runs the TLS record path of conn.c (engine services stubbed)
FUZZ_EXTRA_fuzz_tls := src/core/conn.c
# a TLS handshake per input is slow: fewer standalone mutations for it
FUZZ_MUTATIONS_fuzz_tls ?= 10000
# Only the sources the targets exercise: coverage feedback stays on them,
# and clang-only warnings elsewhere in src/core cannot break the fuzz build.
FUZZ_CORE := src/core/announce.c src/core/discfilter.c src/core/auth.c src/core/tls.c src/core/buf.c src/core/frame.c src/core/result.c src/core/shm.c src/core/vm.c
FUZZ_DEPS := $(FUZZ_CORE) src/core/conn.c $(wildcard src/core/*.h) fuzz/fuzz_common.h $(FUZZ_MK)
FUZZ_OUT := build/fuzz

FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 20
FUZZ_MUTATIONS ?= 200000
FUZZ_SEED ?= 1
FUZZ_INSTALL ?= 1
FUZZ_ARGS ?=
FUZZ_CLANG ?= clang
FUZZ_GCC ?= gcc
# Debian: `clang` alone leaves compiler-rt (libFuzzer, ASan runtimes) to a
# Recommends; name it so --no-install-recommends setups get it too.
FUZZ_APT_PACKAGES := clang libclang-rt-dev

FUZZ_CFLAGS := -std=c11 -Wall -Wextra -Werror -O1 -g -fno-omit-frame-pointer \
  -fno-sanitize-recover=all -Isrc/core
FUZZ_LIBS := -lssl -lcrypto -lpthread
FUZZ_LF_FLAGS := -max_len=16384 -malloc_limit_mb=64 -timeout=10 -print_final_stats=1
FUZZ_ENV := ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1

# Shell snippets. FUZZ_PROBE: does $(FUZZ_CLANG) link -fsanitize=fuzzer?
FUZZ_PROBE = { mkdir -p $(FUZZ_OUT) && \
  printf '%s\n' '\#include <stddef.h>' '\#include <stdint.h>' \
    'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);' \
    'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }' \
    > $(FUZZ_OUT)/probe.c && \
  $(FUZZ_CLANG) -fsanitize=fuzzer,address,undefined -o $(FUZZ_OUT)/probe $(FUZZ_OUT)/probe.c \
    >/dev/null 2>&1; }
FUZZ_APT = { sudo=; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
  { $$sudo env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get update && \
    $$sudo env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y \
      --no-install-recommends $(FUZZ_APT_PACKAGES); } >$(FUZZ_OUT)/apt.log 2>&1; }

.PHONY: fuzz fuzz-smoke fuzz-bins-libfuzzer fuzz-bins-standalone fuzz-clean

$(FUZZ_OUT)/libfuzzer/%: fuzz/%.c $(FUZZ_DEPS)
	@mkdir -p $(dir $@)
	$(FUZZ_CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(FUZZ_CORE) $(FUZZ_EXTRA_$*) $(FUZZ_LIBS)

$(FUZZ_OUT)/standalone/%: fuzz/%.c fuzz/standalone.c $(FUZZ_DEPS)
	@mkdir -p $(dir $@)
	$(FUZZ_GCC) $(FUZZ_CFLAGS) -fsanitize=address,undefined -o $@ $< fuzz/standalone.c $(FUZZ_CORE) $(FUZZ_EXTRA_$*) $(FUZZ_LIBS)

fuzz-bins-libfuzzer: $(addprefix $(FUZZ_OUT)/libfuzzer/,$(FUZZ_TARGETS))
fuzz-bins-standalone: $(addprefix $(FUZZ_OUT)/standalone/,$(FUZZ_TARGETS))

fuzz-smoke:
	@mkdir -p $(FUZZ_OUT)/artifacts; \
	if ! $(FUZZ_PROBE); then \
	  if [ "$(FUZZ_INSTALL)" = 1 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "fuzz-smoke: no clang with libFuzzer; trying apt-get install $(FUZZ_APT_PACKAGES)"; \
	    if $(FUZZ_APT); then echo "fuzz-smoke: installed $(FUZZ_APT_PACKAGES)"; \
	    else echo "fuzz-smoke: installing clang failed (log: $(FUZZ_OUT)/apt.log); falling back"; fi; \
	  fi; \
	fi; \
	if $(FUZZ_PROBE); then \
	  echo "fuzz-smoke: MODE=libfuzzer ($$($(FUZZ_CLANG) --version | head -n1)), $(FUZZ_SMOKE_SECONDS)s per target"; \
	  $(MAKE) -f $(FUZZ_MK) --no-print-directory fuzz-bins-libfuzzer || exit 1; \
	  for t in $(FUZZ_TARGETS); do \
	    tmp=$$(mktemp -d) && cp -R fuzz/corpus/$${t#fuzz_}/. $$tmp/ || exit 1; \
	    $(FUZZ_ENV) $(FUZZ_OUT)/libfuzzer/$$t $(FUZZ_LF_FLAGS) -max_total_time=$(FUZZ_SMOKE_SECONDS) \
	      -artifact_prefix=$(FUZZ_OUT)/artifacts/$$t- $(FUZZ_ARGS) $$tmp >$(FUZZ_OUT)/$$t-smoke.log 2>&1; \
	    rc=$$?; rm -rf $$tmp; \
	    if [ $$rc != 0 ]; then tail -n 60 $(FUZZ_OUT)/$$t-smoke.log; \
	      echo "fuzz-smoke: $$t FAILED (rc $$rc); log $(FUZZ_OUT)/$$t-smoke.log, input in $(FUZZ_OUT)/artifacts/"; exit 1; fi; \
	    echo "fuzz-smoke: $$t ok: $$(grep -m1 '^Done' $(FUZZ_OUT)/$$t-smoke.log)," \
	      "$$(grep -m1 'average_exec_per_sec' $(FUZZ_OUT)/$$t-smoke.log | tr -s ' ' | cut -d' ' -f2) exec/s," \
	      "$$(grep -m1 'new_units_added' $(FUZZ_OUT)/$$t-smoke.log | tr -s ' ' | cut -d' ' -f2) new units"; \
	  done; \
	else \
	  echo "fuzz-smoke: MODE=standalone (no clang with libFuzzer; $(FUZZ_GCC) + ASan/UBSan, corpus + $(FUZZ_MUTATIONS) mutations per target)"; \
	fi; \
	$(MAKE) -f $(FUZZ_MK) --no-print-directory fuzz-bins-standalone || exit 1; \
	for t in $(FUZZ_TARGETS); do \
	  printf 'fuzz-smoke: standalone %s: ' $$t; \
	  n=$(FUZZ_MUTATIONS); [ $$t != fuzz_tls ] || n=$(FUZZ_MUTATIONS_fuzz_tls); \
	  $(FUZZ_ENV) $(FUZZ_OUT)/standalone/$$t -n $$n -s $(FUZZ_SEED) \
	    -o $(FUZZ_OUT)/artifacts/$$t-crash-standalone fuzz/corpus/$${t#fuzz_} || { \
	    echo "fuzz-smoke: $$t FAILED; input in $(FUZZ_OUT)/artifacts/$$t-crash-standalone"; exit 1; }; \
	done

fuzz:
	@mkdir -p $(FUZZ_OUT)/artifacts; \
	if ! $(FUZZ_PROBE); then \
	  echo "fuzz: no clang with libFuzzer; installing $(FUZZ_APT_PACKAGES) with apt-get"; \
	  $(FUZZ_APT) || { tail -n 20 $(FUZZ_OUT)/apt.log; echo "fuzz: apt-get install failed"; exit 1; }; \
	fi; \
	$(FUZZ_PROBE) || { echo "fuzz: $(FUZZ_CLANG) cannot link -fsanitize=fuzzer (install $(FUZZ_APT_PACKAGES))"; exit 1; }; \
	$(MAKE) -f $(FUZZ_MK) --no-print-directory fuzz-bins-libfuzzer || exit 1; \
	n=$$(echo $(FUZZ_TARGETS) | wc -w); secs=$$(( $(FUZZ_SECONDS) / n )); [ $$secs -gt 0 ] || secs=1; \
	echo "fuzz: MODE=libfuzzer ($$($(FUZZ_CLANG) --version | head -n1)), $$secs s per target"; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_OUT)/corpus/$$t; \
	  echo "fuzz: $$t: corpus $(FUZZ_OUT)/corpus/$$t (+ seeds fuzz/corpus/$${t#fuzz_}), log $(FUZZ_OUT)/$$t.log"; \
	  $(FUZZ_ENV) $(FUZZ_OUT)/libfuzzer/$$t $(FUZZ_LF_FLAGS) -max_total_time=$$secs \
	    -artifact_prefix=$(FUZZ_OUT)/artifacts/$$t- $(FUZZ_ARGS) \
	    $(FUZZ_OUT)/corpus/$$t fuzz/corpus/$${t#fuzz_} >$(FUZZ_OUT)/$$t.log 2>&1; \
	  rc=$$?; \
	  if [ $$rc != 0 ]; then tail -n 60 $(FUZZ_OUT)/$$t.log; \
	    echo "fuzz: $$t FAILED (rc $$rc); input in $(FUZZ_OUT)/artifacts/"; exit 1; fi; \
	  echo "fuzz: $$t ok: $$(grep -m1 '^Done' $(FUZZ_OUT)/$$t.log)," \
	    "$$(grep -m1 'new_units_added' $(FUZZ_OUT)/$$t.log | tr -s ' ' | cut -d' ' -f2) new units"; \
	done

fuzz-clean:
	rm -rf $(FUZZ_OUT)

.DEFAULT_GOAL := $(FUZZ_SAVED_GOAL)
