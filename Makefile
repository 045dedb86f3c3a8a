# sallyport — build, test and demo.
#   make          build ./sallyport
#   make check    install missing packages, build, run every test
#   make demo     install missing packages, build, run the demo in the foreground
CC       ?= cc
PYTHON   ?= /usr/bin/python3
BUILD    ?= build
CSTD     := -std=c11 -D_GNU_SOURCE
WARN     := -Wall -Wextra -Wpedantic -Wshadow -Wformat=2 -Werror
OPT      ?= -O2 -g
PKGS     := openssl inih libcrypt libcurl jansson
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
EV_LIBS    := $(shell pkg-config --libs libev 2>/dev/null || echo -lev)
CFLAGS   += $(CSTD) $(WARN) $(OPT) $(PKG_CFLAGS) -Isrc -MMD -MP -pthread
LDLIBS   += $(PKG_LIBS) $(EV_LIBS)

SRCS := $(wildcard src/*.c) $(wildcard src/dialogue/*.c)
OBJS := $(SRCS:%.c=$(BUILD)/%.o)
LIB_OBJS := $(filter-out $(BUILD)/src/main.o,$(OBJS))

BIN      ?= sallyport

.PHONY: all deps check unit integration demo clean format format-check clang asan tsan valgrind bench \
	install uninstall
all: $(BIN)

$(BIN): $(OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

# Unit tests: tests/unit/test_X.c links only the modules it names in
# TEST_MODULES_test_X (STYLE.md: a unit test links only its module).
# Logging is four modules (log.c and what its writer thread uses).
LOG_MODULES := log log_line log_queue log_sink
TEST_MODULES_test_clienthello := clienthello
TEST_MODULES_test_config      := config config_read config_value client_table service sock tls acme_crypto \
                                 $(LOG_MODULES) dialogue/smtp dialogue/imap dialogue/pop3 \
                                 dialogue/sieve dialogue/https dialogue/dialogue
TEST_MODULES_test_mailbox     := smtp_data smtp_syntax userdb maildir $(LOG_MODULES)
TEST_MODULES_test_dialogue    := dialogue/smtp dialogue/imap dialogue/pop3 dialogue/sieve dialogue/https dialogue/dialogue $(LOG_MODULES)
TEST_MODULES_test_dialogue_imap  := dialogue/smtp dialogue/imap dialogue/pop3 dialogue/sieve dialogue/https dialogue/dialogue $(LOG_MODULES)
TEST_MODULES_test_dialogue_pop3  := dialogue/smtp dialogue/imap dialogue/pop3 dialogue/sieve dialogue/https dialogue/dialogue $(LOG_MODULES)
TEST_MODULES_test_dialogue_sieve := dialogue/smtp dialogue/imap dialogue/pop3 dialogue/sieve dialogue/https dialogue/dialogue $(LOG_MODULES)
TEST_MODULES_test_route       := route tls $(LOG_MODULES)
TEST_MODULES_test_client_table := client_table
TEST_MODULES_test_pools        := buf_pool pipe_pool
TEST_MODULES_test_proxy_header := proxy_header
TEST_MODULES_test_metrics     := metrics health service sock $(LOG_MODULES)
TEST_MODULES_test_log          := $(LOG_MODULES)
TEST_MODULES_test_acme_crypto := acme_crypto
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
.SECONDEXPANSION:
$(BUILD)/tests/%: tests/unit/%.c $$(addprefix $(BUILD)/src/,$$(addsuffix .o,$$(TEST_MODULES_$$*)))
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(shell pkg-config --cflags cmocka) -o $@ $(filter %.c %.o,$^) \
	    $(LDFLAGS) $(LDLIBS) $(shell pkg-config --libs cmocka)

deps:
	@sh scripts/install-deps.sh

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; \
	    (cd tests/unit && CMOCKA_MESSAGE_OUTPUT=stdout ../../$$t); done

# The integration tests run in parallel, one pytest-xdist worker per core
# (each hands out ports from its own slice: conftest.free_port).
PYTEST_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST_PARALLEL := -n $(PYTEST_JOBS)
integration: $(BIN)
	cd tests/integration && SALLYPORT=$(abspath $(BIN)) $(PYTHON) -m pytest -q -ra \
	    $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The integration suite against an ASan+UBSan build: any report aborts the
# daemon or lands in its log, and conftest.py fails the test that saw it.
ASAN_VARS := CC=clang BUILD=build/asan BIN=build/asan/sallyport \
	OPT="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
# The TLS scan checks policy, which the sanitizers do not change: run once.
ASAN_PYTEST_ARGS ?= --ignore=test_tls_scan.py
ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1
ASAN_UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=build/asan/tests/%)
asan:
	$(MAKE) $(ASAN_VARS) build/asan/sallyport
	$(ASAN_ENV) $(MAKE) $(ASAN_VARS) unit
	$(ASAN_ENV) $(MAKE) $(ASAN_VARS) integration PYTEST_ARGS="$(ASAN_PYTEST_ARGS)"

# A short run of the daemon under valgrind (memcheck): any error or definite
# leak makes valgrind exit 99, which conftest.py reports as a failure.
VALGRIND_TESTS ?= test_smtp_modes.py::test_mailbox_end_to_end \
	test_workers.py::test_client_limit_counts_all_workers \
	test_smtp_negative.py::test_command_pipelined_behind_starttls_drops_the_connection \
	test_access_negative.py::test_foreign_alpn_terminate_gets_no_application_protocol \
	test_limits.py::test_max_client_connections \
	test_xclient.py::test_client_sees_one_greeting_and_backend_gets_exact_command \
	test_backend_pool.py::test_a_failing_first_backend_is_passed_over \
	test_backend_pool.py::test_checks_mark_a_backend_down_and_up_without_any_client \
	test_reload.py::test_listeners_added_and_removed \
	test_reload.py::test_tls_sessions_resume_across_a_reload \
	test_reload.py::test_a_broken_config_is_refused_and_service_goes_on \
	test_metrics.py::test_counters_follow_the_traffic \
	test_acme_web.py::test_sigusr1_renews_while_a_session_stays_up
valgrind: $(BIN)
	cd tests/integration && SALLYPORT=$(abspath $(BIN)) \
	    SALLYPORT_WRAPPER="valgrind -q --error-exitcode=99 --leak-check=full \
	    --errors-for-leak-kinds=definite --show-leak-kinds=definite" \
	    $(PYTHON) -m pytest -q -ra $(PYTEST_PARALLEL) $(VALGRIND_TESTS) -k "not swaks and not curl"

# The tests that run several workers (threads), against a ThreadSanitizer
# build: a data race is reported in the daemon's log, which fails the test.
TSAN_VARS := CC=clang BUILD=build/tsan BIN=build/tsan/sallyport OPT="-O1 -g -fsanitize=thread"
TSAN_TESTS ?= test_workers.py test_pooled_relay.py test_reload.py test_metrics.py test_logs.py \
	test_acme_web.py
tsan:
	$(MAKE) $(TSAN_VARS) build/tsan/sallyport
	cd tests/integration && SALLYPORT=$(abspath build/tsan/sallyport) \
	    TSAN_OPTIONS="halt_on_error=1 exitcode=66" $(PYTHON) -m pytest -q -ra $(PYTEST_PARALLEL) \
	    $(TSAN_TESTS) \
	    -k "not does_not_spin"

# Benchmarks print numbers; they are never part of make check.
#   make bench   installs haproxy, nginx (mail), sniproxy if missing, builds
#                sallyport and bench/*.c, runs bench/run.py (a table at the end,
#                also in build/bench/results.txt).
BENCH_CC     ?= gcc
BENCH_DIR    := $(BUILD)/bench
BENCH_CFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wpedantic -Werror -O2
BENCH_TLS    = $(shell pkg-config --cflags --libs openssl 2>/dev/null || echo -lssl -lcrypto)
BENCH_BINS   := $(BENCH_DIR)/benchd $(BENCH_DIR)/loadgen $(BENCH_DIR)/splice_relay
bench:
	@sh scripts/install-bench-deps.sh
	$(MAKE) $(BIN) $(BENCH_BINS)
	SALLYPORT=$(abspath $(BIN)) BENCH_BIN=$(abspath $(BENCH_DIR)) $(PYTHON) bench/run.py

$(BENCH_DIR)/benchd: bench/benchd.c bench/bench_io.h
	@mkdir -p $(dir $@)
	$(BENCH_CC) $(BENCH_CFLAGS) -o $@ $< $(BENCH_TLS) $(EV_LIBS)

$(BENCH_DIR)/loadgen: bench/loadgen.c bench/bench_io.h
	@mkdir -p $(dir $@)
	$(BENCH_CC) $(BENCH_CFLAGS) -o $@ $< $(BENCH_TLS) $(EV_LIBS) -lm

$(BENCH_DIR)/splice_relay: bench/splice_relay.c
	@mkdir -p $(dir $@)
	$(BENCH_CC) $(BENCH_CFLAGS) -pthread -o $@ $<

# The same sources must build warning-free with clang too.
clang:
	$(MAKE) CC=clang BUILD=build/clang BIN=build/clang/sallyport build/clang/sallyport

# Builds run on every core, and so do the integration runs (PYTEST_JOBS).
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
check: deps
	$(MAKE) format-check
	$(MAKE) -j$(JOBS) all $(UNIT_BINS)
	$(MAKE) unit
	$(MAKE) -j$(JOBS) clang
	$(MAKE) integration
	$(MAKE) -j$(JOBS) $(FUZZ_BINS)
	$(MAKE) fuzz-smoke
	$(MAKE) valgrind
	$(MAKE) -j$(JOBS) $(TSAN_VARS) build/tsan/sallyport
	$(MAKE) tsan
	$(MAKE) -j$(JOBS) $(ASAN_VARS) build/asan/sallyport $(ASAN_UNIT_BINS)
	$(MAKE) asan

demo: deps
	$(MAKE) all
	sh scripts/demo.sh

# make install [PREFIX=/usr/local] [DESTDIR=] [SYSCONFDIR=/etc]: the binary,
# both man pages, an example config, the systemd unit (its paths filled in)
# and the sysusers.d entry for the user the unit runs as.
PREFIX      ?= /usr/local
SBINDIR     ?= $(PREFIX)/sbin
MANDIR      ?= $(PREFIX)/share/man
DOCDIR      ?= $(PREFIX)/share/doc/sallyport
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
install: $(BIN)
	install -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/sallyport
	install -D -m 0644 docs/sallyport.8 $(DESTDIR)$(MANDIR)/man8/sallyport.8
	install -D -m 0644 docs/sallyport.conf.5 $(DESTDIR)$(MANDIR)/man5/sallyport.conf.5
	install -D -m 0644 dist/sallyport.conf $(DESTDIR)$(DOCDIR)/examples/sallyport.conf
	install -D -m 0644 docs/OPERATIONS.md $(DESTDIR)$(DOCDIR)/OPERATIONS.md
	@mkdir -p $(DESTDIR)$(UNITDIR)
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
	    dist/sallyport.service.in > $(DESTDIR)$(UNITDIR)/sallyport.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/sallyport.service
	install -D -m 0644 dist/sallyport.sysusers $(DESTDIR)$(SYSUSERSDIR)/sallyport.conf

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/sallyport $(DESTDIR)$(MANDIR)/man8/sallyport.8 \
	    $(DESTDIR)$(MANDIR)/man5/sallyport.conf.5 $(DESTDIR)$(DOCDIR)/examples/sallyport.conf \
	    $(DESTDIR)$(DOCDIR)/OPERATIONS.md $(DESTDIR)$(UNITDIR)/sallyport.service \
	    $(DESTDIR)$(SYSUSERSDIR)/sallyport.conf

FORMATTED := $(wildcard src/*.[ch] src/dialogue/*.[ch] tests/unit/*.[ch] fuzz/*.c bench/*.[ch])
format:
	clang-format -i $(FORMATTED)

format-check:
	clang-format --dry-run --Werror $(FORMATTED)

clean:
	rm -rf $(BUILD) sallyport

# Fuzzing (libFuzzer, clang): every parser that reads network or config bytes.
#   make fuzz        build each fuzz/fuzz_X.c into build/fuzz/ and run it FUZZ_SECONDS
#   make fuzz-smoke  the same for FUZZ_SMOKE_SECONDS (what make check runs)
# Each target runs on build/fuzz/corpus/X, a scratch copy of fuzz/corpus/X, so
# generated inputs are never committed; its full log is build/fuzz/fuzz_X.log
# and a crashing input lands in build/fuzz/artifacts/X-crash-*. Fails if any
# target crashes, leaks, times out or breaks an invariant.
FUZZ_CC            ?= clang
FUZZ_DIR           := build/fuzz
FUZZ_SECONDS       ?= 60
FUZZ_SMOKE_SECONDS ?= 8
FUZZ_CFLAGS := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -g -O1 \
	$(CSTD) $(WARN) $(PKG_CFLAGS) -Isrc
FUZZ_TARGETS := clienthello dialogue_server dialogue_backend smtp_data config proxy_header log_line
FUZZ_DIALOGUE_SRCS := src/dialogue/smtp.c src/dialogue/imap.c src/dialogue/pop3.c \
	src/dialogue/sieve.c src/dialogue/https.c src/dialogue/dialogue.c src/log.c src/log_line.c src/log_queue.c \
	src/log_sink.c
FUZZ_SRCS_clienthello      := src/clienthello.c
FUZZ_SRCS_proxy_header     := src/proxy_header.c
FUZZ_SRCS_dialogue_server  := $(FUZZ_DIALOGUE_SRCS)
FUZZ_SRCS_dialogue_backend := $(FUZZ_DIALOGUE_SRCS)
FUZZ_SRCS_smtp_data        := src/smtp_data.c
FUZZ_SRCS_log_line         := src/log_line.c src/log.c src/log_queue.c src/log_sink.c
FUZZ_SRCS_config := src/config.c src/config_read.c src/config_value.c src/client_table.c src/service.c \
	src/sock.c src/tls.c src/acme_crypto.c $(FUZZ_DIALOGUE_SRCS)
FUZZ_LIBS_config := $(shell pkg-config --libs openssl inih 2>/dev/null)
FUZZ_MAXLEN_clienthello      := 17000
FUZZ_MAXLEN_dialogue_server  := 4096
FUZZ_MAXLEN_dialogue_backend := 4096
FUZZ_MAXLEN_smtp_data        := 65536
FUZZ_MAXLEN_config           := 4096
FUZZ_MAXLEN_proxy_header     := 2048
FUZZ_MAXLEN_log_line         := 2100
FUZZ_BINS := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)

$(FUZZ_DIR)/fuzz_%: fuzz/fuzz_%.c $$(FUZZ_SRCS_$$*) $(wildcard src/*.h src/dialogue/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_SRCS_$*) $(FUZZ_LIBS_$*)

# $(call fuzz_run,SECONDS): runs every target in turn; prints each one's
# "Done N runs in S second(s)" and final coverage, or the tail of its log.
define fuzz_run
	@failed=""; \
	for tm in $(foreach t,$(FUZZ_TARGETS),$(t):$(FUZZ_MAXLEN_$(t))); do \
	    t=$${tm%%:*}; maxlen=$${tm#*:}; \
	    corpus=$(FUZZ_DIR)/corpus/$$t; log=$(FUZZ_DIR)/fuzz_$$t.log; \
	    mkdir -p $$corpus $(FUZZ_DIR)/artifacts; \
	    cp -r fuzz/corpus/$$t/. $$corpus/; \
	    echo "== fuzz_$$t: $(1) s, -max_len=$$maxlen, corpus $$corpus, log $$log"; \
	    if $(FUZZ_DIR)/fuzz_$$t -max_total_time=$(1) -max_len=$$maxlen -timeout=10 \
	        -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t- \
	        $$corpus >$$log 2>&1; then \
	        grep -E '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs' $$log; \
	    else \
	        tail -n 60 $$log; \
	        art=$$(sed -n 's/.*Test unit written to //p' $$log | tail -n 1); \
	        echo "== fuzz_$$t FAILED: reproduce with $(FUZZ_DIR)/fuzz_$$t $${art:-(see $$log)}"; \
	        failed="$$failed $$t"; \
	    fi; \
	done; \
	if [ -n "$$failed" ]; then echo "== fuzzing failed:$$failed"; exit 1; fi
endef

.PHONY: fuzz fuzz-smoke
fuzz: $(FUZZ_BINS)
	$(call fuzz_run,$(FUZZ_SECONDS))

fuzz-smoke: $(FUZZ_BINS)
	$(call fuzz_run,$(FUZZ_SMOKE_SECONDS))

-include $(OBJS:.o=.d) $(UNIT_BINS:=.d)
