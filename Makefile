# sse-server. `make` builds ./sse-server; `make run` starts the demo; `make test` runs every
# test (installing pytest from Debian when needed); `make asan` builds ./sse-server-asan;
# `make lint` runs cppcheck and clang-tidy; `make valgrind` runs part of the suite under valgrind.

CC ?= cc
CFLAGS ?= -O2 -g
WARNINGS = -std=c11 -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wstrict-prototypes \
           -Wmissing-prototypes -Wformat=2
ifeq ($(WERROR),1)
WARNINGS += -Werror
endif
SANITIZE = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
PYTHON = /usr/bin/python3
BUILD = build

.PHONY: all run test unit pytest deps asan clean format bench bench-smoke bench-tools lint \
        lint-cppcheck valgrind
all: sse-server

$(BUILD) $(BUILD)/asan:
	mkdir -p $@

# The built-in page is compiled in from its HTML source, byte for byte.
$(BUILD)/demo_page.c: examples/demo/index.html | $(BUILD)
	{ echo '#include <stddef.h>'; \
	  echo 'extern const unsigned char demo_page[]; extern const size_t demo_page_len;'; \
	  echo 'const unsigned char demo_page[] = {'; \
	  od -An -v -tx1 $< | sed 's/\([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	  echo '};'; \
	  echo 'const size_t demo_page_len = sizeof demo_page;'; } > $@

$(BUILD)/%.o: %.c sse.h | $(BUILD)
	$(CC) $(WARNINGS) $(CFLAGS) -c $< -o $@

$(BUILD)/demo_page.o: $(BUILD)/demo_page.c
	$(CC) $(CFLAGS) -c $< -o $@

sse-server: $(BUILD)/sse.o $(BUILD)/main.o $(BUILD)/demo_page.o
	$(CC) $(CFLAGS) $^ -o $@

$(BUILD)/asan/%.o: %.c sse.h | $(BUILD)/asan
	$(CC) $(WARNINGS) -O1 -g $(SANITIZE) -c $< -o $@

sse-server-asan: $(BUILD)/asan/sse.o $(BUILD)/asan/main.o $(BUILD)/demo_page.c
	$(CC) -O1 -g $(SANITIZE) $^ -o $@

# Unit tests include sse.c itself, so they reach its static functions.
$(BUILD)/unit: tests/unit.c sse.c sse.h | $(BUILD)
	$(CC) $(WARNINGS) -O1 -g $(SANITIZE) $< -o $@

asan: sse-server-asan $(BUILD)/unit

run: sse-server
	./sse-server --demo

# Test dependencies from Debian: pytest, and nginx for the test of sse-server behind nginx.
# A temporary policy-rc.d keeps the nginx package from starting a system nginx on port 80.
deps:
	@missing=; \
	$(PYTHON) -c 'import pytest' 2>/dev/null || missing="$$missing python3-pytest"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "make test needs:$$missing (sudo apt-get install$$missing)" >&2; \
	  case "$$missing" in *pytest*) exit 1;; esac; exit 0; \
	fi; \
	echo "make test: installing$$missing with apt-get"; \
	guard=; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
	  chmod +x /usr/sbin/policy-rc.d; guard=1; }; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	status=$$?; [ -n "$$guard" ] && rm -f /usr/sbin/policy-rc.d; exit $$status

unit: $(BUILD)/unit
	$(BUILD)/unit

pytest: sse-server deps
	$(PYTHON) -m pytest -q tests

test: deps sse-server unit pytest

# Benchmarks (bench/run.py): `make bench` runs every scenario against the peers and writes
# bench/RESULTS.md; `make bench-smoke` is the seconds-long version CI runs.
$(BUILD)/sseload: bench/sseload.c | $(BUILD)
	$(CC) $(WARNINGS) -O2 -g $< -o $@

bench-tools: sse-server $(BUILD)/sseload

bench: bench-tools
	$(PYTHON) bench/run.py

bench-smoke: bench-tools
	$(PYTHON) bench/run.py --smoke

# Static analysis; any finding fails. cppcheck reads .ci/cppcheck-suppressions.xml and
# `cppcheck-suppress` comments, clang-tidy reads .clang-tidy (checks and why some are off) and
# compiles with the build's flags. The benchmark's load generator gets cppcheck only: it is a
# measuring tool, not shipped, and clang-tidy's rules for its atoi() option parsing and
# exit-time frees would be churn. `make -j2 lint` runs the clang-tidy jobs side by side.
CPPCHECK = cppcheck --std=c11 --library=posix --enable=warning,style,performance,portability \
           --inline-suppr --suppress-xml=.ci/cppcheck-suppressions.xml --error-exitcode=1 \
           --quiet -I.
TIDY_SRC = sse.c main.c tests/unit.c

lint: lint-cppcheck $(TIDY_SRC:%=lint-tidy/%)

lint-cppcheck:
	$(CPPCHECK) sse.c main.c tests/unit.c bench/sseload.c

.PHONY: $(TIDY_SRC:%=lint-tidy/%)
$(TIDY_SRC:%=lint-tidy/%): lint-tidy/%: %
	clang-tidy --quiet --warnings-as-errors='*' $< -- $(WARNINGS)

format:
	clang-format -i sse.c sse.h main.c tests/unit.c bench/sseload.c

clean:
	rm -rf $(BUILD) sse-server sse-server-asan
