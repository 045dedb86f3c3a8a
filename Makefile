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
PKGS     := openssl inih libcrypt
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
EV_LIBS    := $(shell pkg-config --libs libev 2>/dev/null || echo -lev)
CFLAGS   += $(CSTD) $(WARN) $(OPT) $(PKG_CFLAGS) -Isrc -MMD -MP
LDLIBS   += $(PKG_LIBS) $(EV_LIBS)

SRCS := $(wildcard src/*.c) $(wildcard src/dialogue/*.c)
OBJS := $(SRCS:%.c=$(BUILD)/%.o)
LIB_OBJS := $(filter-out $(BUILD)/src/main.o,$(OBJS))

BIN      ?= sallyport

.PHONY: all deps check unit integration demo clean format format-check clang asan
all: $(BIN)

$(BIN): $(OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

# Unit tests: tests/unit/test_X.c links only the modules it names in
# TEST_MODULES_test_X (STYLE.md: a unit test links only its module).
TEST_MODULES_test_clienthello := clienthello
TEST_MODULES_test_config      := config config_read config_value service sock tls log
TEST_MODULES_test_mailbox     := smtp_data smtp_syntax userdb maildir log
TEST_MODULES_test_dialogue    := dialogue/smtp dialogue/imap dialogue/pop3 dialogue/sieve dialogue/dialogue log
TEST_MODULES_test_route       := route tls log
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
.SECONDEXPANSION:
$(BUILD)/tests/%: tests/unit/%.c $$(addprefix $(BUILD)/src/,$$(addsuffix .o,$$(TEST_MODULES_$$*)))
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(shell pkg-config --cflags cmocka) -o $@ $^ \
	    $(LDFLAGS) $(LDLIBS) $(shell pkg-config --libs cmocka)

deps:
	@sh scripts/install-deps.sh

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; \
	    (cd tests/unit && CMOCKA_MESSAGE_OUTPUT=stdout ../../$$t); done

integration: $(BIN)
	cd tests/integration && SALLYPORT=$(abspath $(BIN)) $(PYTHON) -m pytest -q -ra $(PYTEST_ARGS)

# The same sources must build warning-free with clang too.
clang:
	$(MAKE) CC=clang BUILD=build/clang BIN=build/clang/sallyport build/clang/sallyport

check: deps
	$(MAKE) format-check
	$(MAKE) all unit
	$(MAKE) clang
	$(MAKE) integration

demo: deps
	$(MAKE) all
	sh scripts/demo.sh

FORMATTED := $(wildcard src/*.[ch] src/dialogue/*.[ch] tests/unit/*.c fuzz/*.c)
format:
	clang-format -i $(FORMATTED)

format-check:
	clang-format --dry-run --Werror $(FORMATTED)

clean:
	rm -rf $(BUILD) sallyport

-include $(OBJS:.o=.d)
