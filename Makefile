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

# The black-box suite's representative part under valgrind (conftest.py reads
# SSE_SERVER_WRAPPER): streaming, publishing, replay, static files, the proxy, relays and
# hostile HTTP, about three and a half minutes. A leak or memory error makes the server exit 99 at
# SIGTERM, which fails the test; valgrind's report is in the failure's stderr.
VALGRIND = valgrind -q --leak-check=full --show-leak-kinds=definite,indirect \
           --errors-for-leak-kinds=definite,indirect --error-exitcode=99 --num-callers=30
T = tests/test_
VALGRIND_TESTS = $(T)proxy.py $(T)relay.py \
  $(T)replay.py::test_replay_query_with_topics \
  $(T)replay.py::test_replay_only_stream_topics_in_order \
  $(T)replay.py::test_reset_older_than_backlog $(T)replay.py::test_reset_requested_is_json_escaped \
  $(T)replay.py::test_seam_no_gap_no_duplicate $(T)replay.py::test_large_replay_exact \
  $(T)publish.py::test_published_event_arrives_with_returned_id \
  $(T)publish.py::test_body_arriving_in_pieces $(T)publish.py::test_expect_100_continue \
  $(T)publish.py::test_413_closes_connection $(T)publish.py::test_pipelined_publishes \
  $(T)publish.py::test_max_size_event_reaches_idle_subscriber \
  $(T)publish.py::test_delete_publish_json $(T)publish.py::test_wrong_tokens_401 \
  $(T)publish.py::test_invalid_utf8_400_nothing_delivered $(T)publish.py::test_chunked_411 \
  $(T)publish.py::test_content_length_and_transfer_encoding_400 \
  $(T)publish.py::test_cors_on_publish_and_preflight \
  $(T)stream.py::test_stream_head_exact $(T)stream.py::test_multi_topic_in_id_order \
  $(T)stream.py::test_multiline_cr_crlf_lf $(T)stream.py::test_utf8_multibyte_and_emoji \
  $(T)stream.py::test_retire_flushes_large_queue_before_eof \
  $(T)stream.py::test_retire_closes_all_subscribers_of_topic \
  $(T)stream.py::test_subscribe_token_wrong_401 $(T)stream.py::test_accept_json_406 \
  $(T)stream.py::test_33_topics_rejected $(T)stream.py::test_cors_origin_with_credentials \
  $(T)stream.py::test_heartbeat_one_second \
  $(T)static.py::test_root_index $(T)static.py::test_big_binary_file_exact \
  $(T)static.py::test_directory_without_slash_redirects \
  $(T)static.py::test_if_modified_since_equal_304 $(T)static.py::test_symlink_to_file_outside_404 \
  $(T)static.py::test_fifo_404_no_hang $(T)static.py::test_keep_alive_across_static_files \
  $(T)static.py::test_bad_escapes_400 $(T)static.py::test_missing_file_404 \
  $(T)static.py::test_head_static \
  $(T)http.py::test_malformed_400 $(T)http.py::test_smuggling_shapes_400 \
  $(T)http.py::test_65_headers_431 $(T)http.py::test_head_of_8195_bytes_431 \
  $(T)http.py::test_pipelining_responses_in_order \
  $(T)http.py::test_pipelined_junk_after_valid_request \
  $(T)http.py::test_idle_keep_alive_closed_after_header_timeout \
  $(T)http.py::test_unknown_method_405 $(T)http.py::test_other_versions_505 \
  $(T)http.py::test_metrics_values_follow_publishing $(T)http.py::test_head_split_byte_by_byte

valgrind: sse-server deps
	@command -v valgrind >/dev/null || { echo 'make valgrind needs valgrind' >&2; exit 1; }
	SSE_SERVER_WRAPPER='$(VALGRIND)' $(PYTHON) -m pytest -q $(VALGRIND_TESTS)

format:
	clang-format -i sse.c sse.h main.c tests/unit.c bench/sseload.c

clean:
	rm -rf $(BUILD) sse-server sse-server-asan
