# sse-server. `make` builds ./sse-server; `make run` starts the demo (PORT=9000 or
# LISTEN=HOST:PORT to choose the address); `make install` installs it (PREFIX, DESTDIR);
# `make static` builds ./sse-server-static, linked statically against musl;
# `make test` runs every test (tests/install-deps.sh installs what the tests need, as root,
# or names it);
# `make asan` builds ./sse-server-asan; `make fuzz` runs every libFuzzer target for
# FUZZ_SECONDS seconds (needs clang);
# `make lint` runs cppcheck and clang-tidy; `make valgrind` runs part of the suite under valgrind;
# `make examples` builds the embedding examples into build/; `make core` builds the core alone
# (no proxy, journal or Redis) into build/core/, and `make test-core` tests it.

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

.PHONY: all run test unit pytest deps asan clean format bench bench-smoke bench-tools fuzz \
        fuzz-replay fuzz-deps lint lint-cppcheck valgrind examples core test-core man install \
        static
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

# The examples (README: Embedding), linked with the library as built here;
# tests/test_examples.py builds them from copies of sse.c and sse.h, as an embedder would.
EXAMPLES = $(BUILD)/minimal $(BUILD)/embed-host

examples: $(EXAMPLES)

$(BUILD)/minimal: examples/minimal.c $(BUILD)/sse.o sse.h
	$(CC) $(WARNINGS) $(CFLAGS) -I. $< $(BUILD)/sse.o -o $@

$(BUILD)/embed-host: examples/embed/host.c $(BUILD)/sse.o sse.h
	$(CC) $(WARNINGS) $(CFLAGS) -I. $< $(BUILD)/sse.o -o $@

# Unit tests include sse.c itself, so they reach its static functions.
$(BUILD)/unit: tests/unit.c tests/b64url.h sse.c sse.h | $(BUILD)
	$(CC) $(WARNINGS) -O1 -g $(SANITIZE) $< -o $@

asan: sse-server-asan $(BUILD)/unit

# The core alone: sse.c with every part switched off (sse.h: SSE_ENABLE_*), the server and the
# unit tests, into build/core/. `make test-core` runs those unit tests and every black-box test
# that needs no part (the tests say which part they need with a marker) against that server,
# the embedding examples built from the core alone too.
CORE_PARTS_OFF = -DSSE_ENABLE_PROXY=0 -DSSE_ENABLE_JOURNAL=0 -DSSE_ENABLE_REDIS=0 -DSSE_ENABLE_AUTH=0
CORE_TESTS = not proxy and not relay and not journal and not redis and not auth

$(BUILD)/core:
	mkdir -p $@

$(BUILD)/core/%.o: %.c sse.h | $(BUILD)/core
	$(CC) $(WARNINGS) $(CORE_PARTS_OFF) $(CFLAGS) -c $< -o $@

$(BUILD)/core/sse-server: $(BUILD)/core/sse.o $(BUILD)/core/main.o $(BUILD)/demo_page.o
	$(CC) $(CFLAGS) $^ -o $@

$(BUILD)/core/unit: tests/unit.c sse.c sse.h | $(BUILD)/core
	$(CC) $(WARNINGS) $(CORE_PARTS_OFF) -O1 -g $(SANITIZE) $< -o $@

core: $(BUILD)/core/sse-server $(BUILD)/core/unit

test-core: deps core
	$(BUILD)/core/unit
	SSE_SERVER_BIN='$(CURDIR)/$(BUILD)/core/sse-server' SSE_EXAMPLES_CFLAGS='$(CORE_PARTS_OFF)' \
	  $(PYTHON) -m pytest -q -m '$(CORE_TESTS)' tests

# `make run` starts the demo on 127.0.0.1:8080; `make run PORT=9000` on 127.0.0.1:9000, and
# `make run LISTEN=HOST:PORT` (as --listen takes it: :9000 for every address) where it says.
LISTEN ?= $(if $(PORT),127.0.0.1:$(PORT))
run: sse-server
	./sse-server --demo $(if $(LISTEN),--listen '$(LISTEN)')

# The man page: the binary prints it (--help-man) from the option table --help prints, so the
# two cannot drift apart (tests/test_cli.py compares them).
$(BUILD)/sse-server.1: sse-server | $(BUILD)
	./sse-server --help-man > $@.tmp && mv $@.tmp $@

man: $(BUILD)/sse-server.1

# `make install [PREFIX=/usr/local] [DESTDIR=]`: the binary to $(DESTDIR)$(PREFIX)/bin, the
# man page to $(DESTDIR)$(PREFIX)/share/man/man1, and deploy/sse-server.service to
# $(DESTDIR)$(PREFIX)/lib/systemd/system: systemd reads units from /usr/local/lib/systemd/system
# and /usr/lib/systemd/system (so PREFIX=/usr/local and PREFIX=/usr both work), and
# /etc/systemd/system stays the administrator's. The unit's ExecStart is made to name the
# installed binary ($(PREFIX)/bin/sse-server). DESTDIR is for staging (packages): nothing
# installed refers to it. Then: systemctl daemon-reload && systemctl enable --now sse-server.
PREFIX ?= /usr/local
BINDIR = $(PREFIX)/bin
MAN1DIR = $(PREFIX)/share/man/man1
UNITDIR = $(PREFIX)/lib/systemd/system

install: sse-server $(BUILD)/sse-server.1
	install -d '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(MAN1DIR)' '$(DESTDIR)$(UNITDIR)'
	install -m 755 sse-server '$(DESTDIR)$(BINDIR)/sse-server'
	install -m 644 $(BUILD)/sse-server.1 '$(DESTDIR)$(MAN1DIR)/sse-server.1'
	sed 's|^ExecStart=/usr/local/bin/sse-server|ExecStart=$(BINDIR)/sse-server|' \
	  deploy/sse-server.service > $(BUILD)/sse-server.service
	install -m 644 $(BUILD)/sse-server.service '$(DESTDIR)$(UNITDIR)/sse-server.service'

# `make static`: ./sse-server-static, linked statically against musl (Debian's musl-tools:
# musl-gcc), so it runs on any x86-64 Linux with nothing installed; stripped. Static glibc is
# not used: its getaddrinfo() warns at link time that it needs the shared libraries of the
# glibc it was built with at run time. musl-gcc's include path leaves out the system's, so
# the kernel headers sse.c takes (linux/sockios.h, for SIOCOUTQ) come from
# build/static/include, links to the system's linux/, asm/ and asm-generic/. sse.c is
# compiled with -Wno-conversion there: musl's struct msghdr has an int msg_iovlen (POSIX),
# glibc's a size_t, and sse.c is written (warning-free) for glibc's.
MUSL_CC = musl-gcc
STATIC_CFLAGS = -O2
STATIC_INCLUDE = $(BUILD)/static/include

$(STATIC_INCLUDE)/linux:
	@command -v $(MUSL_CC) >/dev/null || \
	  { echo 'make static needs $(MUSL_CC): apt-get install musl-tools (Debian)' >&2; exit 1; }
	mkdir -p $(STATIC_INCLUDE)
	ln -sfn /usr/include/asm-generic $(STATIC_INCLUDE)/asm-generic
	ln -sfn "/usr/include/$$($(MUSL_CC) -print-multiarch)/asm" $(STATIC_INCLUDE)/asm
	ln -sfn /usr/include/linux $@

$(BUILD)/static/sse.o: sse.c sse.h | $(STATIC_INCLUDE)/linux
	$(MUSL_CC) $(WARNINGS) -Wno-conversion $(STATIC_CFLAGS) -isystem $(STATIC_INCLUDE) -c $< -o $@

$(BUILD)/static/main.o: main.c sse.h | $(STATIC_INCLUDE)/linux
	$(MUSL_CC) $(WARNINGS) $(STATIC_CFLAGS) -isystem $(STATIC_INCLUDE) -c $< -o $@

$(BUILD)/static/demo_page.o: $(BUILD)/demo_page.c | $(STATIC_INCLUDE)/linux
	$(MUSL_CC) $(STATIC_CFLAGS) -c $< -o $@

sse-server-static: $(BUILD)/static/sse.o $(BUILD)/static/main.o $(BUILD)/static/demo_page.o
	$(MUSL_CC) -static -s $^ -o $@

static: sse-server-static

# Test dependencies (pytest, the real clients and tools the tests use, the checkers CI runs,
# the npm packages of tests/browser): tests/install-deps.sh says what is missing and which test
# needs it, then installs it as root or names it otherwise.
deps:
	@sh tests/install-deps.sh $(PYTHON)

unit: $(BUILD)/unit
	$(BUILD)/unit

pytest: sse-server deps
	$(PYTHON) -m pytest -q tests

test: deps sse-server examples unit fuzz-replay pytest

# Fuzz targets (tests/fuzz/*.c) include sse.c like the unit tests. `make fuzz` builds them
# with libFuzzer and runs them one after the other, FUZZ_SECONDS each; new corpus entries go
# to build/fuzz/corpus, crashers to build/fuzz/crashes. Any crash, leak or sanitizer report
# fails it. Crashers, once fixed, are kept under tests/fuzz/regressions/TARGET/; `make test`
# replays those and the seed corpus through tests/fuzz/replay.c, with the compiler at hand.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = http_request query wire_reader format_roundtrip static_resolve http_response \
               http_path \
               journal resp jwt
FUZZ_CC = clang
FUZZ_FLAGS = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all

$(BUILD)/fuzz/bin $(BUILD)/fuzz/replay:
	mkdir -p $@

$(BUILD)/fuzz/bin/%: tests/fuzz/%.c tests/fuzz/fuzz.h tests/b64url.h sse.c sse.h | $(BUILD)/fuzz/bin fuzz-deps
	$(FUZZ_CC) $(WARNINGS) $(FUZZ_FLAGS) $< -o $@

# clang and its libFuzzer runtime, from Debian when missing (as root).
fuzz-deps:
	@mkdir -p $(BUILD)/fuzz; \
	printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return (int)(d[0] + n); }\n' \
	  > $(BUILD)/fuzz/probe.c; \
	$(FUZZ_CC) -fsanitize=fuzzer $(BUILD)/fuzz/probe.c -o $(BUILD)/fuzz/probe 2>/dev/null && exit 0; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "make fuzz needs clang and libclang-rt-14-dev" >&2; exit 1; fi; \
	echo "make fuzz: installing clang libclang-rt-14-dev with apt-get"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang \
	  libclang-rt-14-dev >/dev/null

$(BUILD)/fuzz/replay/%: tests/fuzz/%.c tests/fuzz/replay.c tests/fuzz/fuzz.h tests/b64url.h sse.c sse.h \
                        | $(BUILD)/fuzz/replay
	$(CC) $(WARNINGS) -O1 -g $(SANITIZE) $< tests/fuzz/replay.c -o $@

fuzz: $(addprefix $(BUILD)/fuzz/bin/,$(FUZZ_TARGETS))
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(BUILD)/fuzz/corpus/$$t $(BUILD)/fuzz/crashes/$$t || exit 1; \
	  regressions=; [ -d tests/fuzz/regressions/$$t ] && regressions=tests/fuzz/regressions/$$t; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(BUILD)/fuzz/bin/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -detect_leaks=1 \
	    -print_final_stats=1 -artifact_prefix=$(BUILD)/fuzz/crashes/$$t/ \
	    $(BUILD)/fuzz/corpus/$$t tests/fuzz/corpus/$$t $$regressions \
	    > $(BUILD)/fuzz/$$t.log 2>&1 \
	    || { tail -n 60 $(BUILD)/fuzz/$$t.log; echo "fuzz: $$t failed" >&2; exit 1; }; \
	  grep -E '^(Done|stat::number_of_executed_units)' $(BUILD)/fuzz/$$t.log || true; \
	done

fuzz-replay: $(addprefix $(BUILD)/fuzz/replay/,$(FUZZ_TARGETS))
	@for t in $(FUZZ_TARGETS); do \
	  ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(BUILD)/fuzz/replay/$$t tests/fuzz/corpus/$$t tests/fuzz/regressions/$$t || exit 1; \
	done

# Benchmarks (bench/run.py): `make bench` runs every scenario against the peers and writes
# bench/RESULTS.md; `make bench-smoke` is the seconds-long version CI runs.
$(BUILD)/sseload: bench/sseload.c | $(BUILD)
	$(CC) $(WARNINGS) -O2 -g $< -o $@

bench-tools: sse-server $(BUILD)/sseload

bench: bench-tools
	$(PYTHON) bench/run.py

bench-smoke: bench-tools
	$(PYTHON) bench/run.py --smoke
	$(PYTHON) bench/auth_connect.py --smoke

# Static analysis; any finding fails. cppcheck reads .ci/cppcheck-suppressions.xml and
# `cppcheck-suppress` comments, clang-tidy reads .clang-tidy (checks and why some are off) and
# compiles with the build's flags. The benchmark's load generator gets cppcheck only: it is a
# measuring tool, not shipped, and clang-tidy's rules for its atoi() option parsing and
# exit-time frees would be churn. `make -j2 lint` runs the clang-tidy jobs side by side.
CPPCHECK = cppcheck --std=c11 --library=posix --enable=warning,style,performance,portability \
           --inline-suppr --suppress-xml=.ci/cppcheck-suppressions.xml --error-exitcode=1 \
           --quiet -I.
TIDY_SRC = sse.c main.c tests/unit.c examples/minimal.c examples/embed/host.c
# The fuzz targets include sse.c, which its own job analyzes already: theirs run every check
# but the (slow, whole-program) static analyzer, and report only the targets' own lines.
TIDY_FUZZ = $(wildcard tests/fuzz/*.c)

lint: lint-cppcheck $(TIDY_SRC:%=lint-tidy/%) $(TIDY_FUZZ:%=lint-tidy-fuzz/%)

lint-cppcheck:
	$(CPPCHECK) sse.c main.c tests/unit.c bench/sseload.c examples/minimal.c \
	  examples/embed/host.c $(TIDY_FUZZ)

.PHONY: $(TIDY_SRC:%=lint-tidy/%)
$(TIDY_SRC:%=lint-tidy/%): lint-tidy/%: %
	clang-tidy --quiet --warnings-as-errors='*' $< -- $(WARNINGS) -I.

.PHONY: $(TIDY_FUZZ:%=lint-tidy-fuzz/%)
$(TIDY_FUZZ:%=lint-tidy-fuzz/%): lint-tidy-fuzz/%: %
	clang-tidy --quiet --warnings-as-errors='*' --checks='-clang-analyzer-*' $< -- $(WARNINGS) -I.

# The black-box suite's representative part under valgrind (conftest.py reads
# SSE_SERVER_WRAPPER): the tests marked @pytest.mark.valgrind (streaming, publishing, replay,
# static files, the proxy, relays, the journal, Redis and hostile HTTP), about three and a half
# minutes. A leak or memory error makes the server exit 99 at SIGTERM, which fails the test;
# valgrind's report is in the failure's stderr.
VALGRIND = valgrind -q --leak-check=full --show-leak-kinds=definite,indirect \
           --errors-for-leak-kinds=definite,indirect --error-exitcode=99 --num-callers=30
valgrind: sse-server deps
	@command -v valgrind >/dev/null || { echo 'make valgrind needs valgrind' >&2; exit 1; }
	SSE_SERVER_WRAPPER='$(VALGRIND)' $(PYTHON) -m pytest -q -m valgrind tests

format:
	clang-format -i sse.c sse.h main.c tests/unit.c tests/b64url.h bench/sseload.c tests/fuzz/*.c tests/fuzz/*.h \
	  examples/minimal.c examples/embed/host.c

clean:
	rm -rf $(BUILD) sse-server sse-server-asan sse-server-static

# The mutation check (tests/mutants.py): plants each of a handful of plausible one-line bugs
# in a copy of sse.c, builds it into build/mutants/NAME/, runs the tests named to catch it
# against that binary, and fails if one is missed. About two minutes.
.PHONY: mutants
mutants: sse-server
	$(PYTHON) tests/mutants.py
