# Makefile: builds the library (lib/ -> libnodepool.a), the programs on top
# of it (cli/ -> nodepool; programs/X.c -> X, e.g. nodepool-launcher) and the
# tests. Every lib/*.c, cli/*.c and programs/*.c file is picked up by
# wildcard, so adding a subsystem, a subcommand or a daemon needs no edit
# here.
#
#   make            release-ish build in build/
#   make SAN=1      ASan+UBSan build in build-san/
#   make test       unit and integration tests (plain build, then SAN=1)
#
# `make` also builds the benchmarks' C parts (bench/*.c); the benchmarks
# themselves are the scripts bench/*.sh (they print figures).

CC      ?= gcc
PKGS    := jansson yaml-0.1 openssl libssh libmicrohttpd libcurl
CFLAGS_BASE := -std=c17 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
	-Wno-unused-parameter -Wstrict-prototypes -Wmissing-prototypes \
	-Ilib $(shell pkg-config --cflags $(PKGS))
# libmicrohttpd, libcurl and libssh are not linked: lib/webapp.c loads the
# first when a web app starts, lib/http.c the second when a cloud driver
# makes its first HTTP client, lib/keyscan.c the third for its first scan
# (by the sonames found here), so that programs and runs without them do
# not map and initialise them and what they pull in (GnuTLS, LDAP,
# Kerberos, ...). The tests' own HTTP server links libmicrohttpd.
DLOPENED := libmicrohttpd libcurl libssh
LIBS    := $(shell pkg-config --libs $(filter-out $(DLOPENED),$(PKGS))) \
	-lpthread -lm
TEST_LIBS := $(LIBS) $(shell pkg-config --libs libmicrohttpd)
soname = $(shell objdump -p $$(pkg-config --variable=libdir $(1))/$(2) \
	2>/dev/null | awk '/SONAME/ {print $$2}')
MHD_SONAME := $(call soname,libmicrohttpd,libmicrohttpd.so)
CURL_SONAME := $(call soname,libcurl,libcurl.so)
LIBSSH_SONAME := $(call soname,libssh,libssh.so)
ifneq ($(MHD_SONAME),)
CFLAGS_BASE += -DMHD_SONAME='"$(MHD_SONAME)"'
endif
ifneq ($(CURL_SONAME),)
CFLAGS_BASE += -DCURL_SONAME='"$(CURL_SONAME)"'
endif
ifneq ($(LIBSSH_SONAME),)
CFLAGS_BASE += -DLIBSSH_SONAME='"$(LIBSSH_SONAME)"'
endif

ifeq ($(SAN),1)
BUILD   ?= build-san
# (BUILD may be overridden)
CFLAGS  := $(CFLAGS_BASE) -O1 -g -fno-omit-frame-pointer \
	-fsanitize=address,undefined -fno-sanitize-recover=undefined
LDFLAGS := -fsanitize=address,undefined
# The sanitizer runtime's defaults (lib/sanitizer.c). Nothing refers to
# them, so as a member of libnodepool.a they would never be linked.
SAN_OBJ := $(BUILD)/lib/sanitizer.o
else
BUILD   ?= build
CFLAGS  := $(CFLAGS_BASE) -O2 -g
LDFLAGS :=
SAN_OBJ :=
# The programs are optimised across files at link time: the request path
# crosses many small functions in other files (sbuf appends, the caches'
# look-ups, record fields), and the launcher takes some 5% less CPU per
# request for it (docs/benchmarks.md, sixth round). The objects carry
# both forms (fat), so the tests and benchmarks link their plain code
# quickly, without a whole-program optimisation per test binary.
LTO_CFLAGS  := -flto=auto -ffat-lto-objects
PROG_LDFLAGS := -flto=auto -O2 -g
NO_LTO      := -fno-lto
endif

VERSION := $(shell cat VERSION 2>/dev/null || echo 0.0.0)
CFLAGS  += -DNODEPOOL_VERSION='"$(VERSION)"'

LIB_SRC   := $(wildcard lib/*.c)
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_SRC   := $(wildcard cli/*.c)
CLI_OBJ   := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_SRC  := $(wildcard tests/unit/test_*.c)
TEST_BIN  := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TESTLIB   := $(BUILD)/tests/unit/testlib.o
PROG_SRC  := $(wildcard programs/*.c)
PROG_BIN  := $(PROG_SRC:programs/%.c=$(BUILD)/%)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all test clean
all: $(BUILD)/nodepool $(PROG_BIN) $(TEST_BIN) $(BENCH_BIN)

$(BUILD)/libnodepool.a: $(LIB_OBJ)
	@rm -f $@
	gcc-ar rcs $@ $^

$(BUILD)/nodepool: $(CLI_OBJ) $(BUILD)/libnodepool.a $(SAN_OBJ)
	$(CC) $(LDFLAGS) $(PROG_LDFLAGS) -o $@ $(CLI_OBJ) $(SAN_OBJ) $(BUILD)/libnodepool.a $(LIBS)

$(BUILD)/%: $(BUILD)/programs/%.o $(BUILD)/libnodepool.a $(SAN_OBJ)
	$(CC) $(LDFLAGS) $(PROG_LDFLAGS) -o $@ $< $(SAN_OBJ) $(BUILD)/libnodepool.a $(LIBS)

$(BUILD)/tests/%: tests/unit/%.c $(TESTLIB) $(BUILD)/libnodepool.a $(SAN_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(NO_LTO) -Itests/unit $(LDFLAGS) -o $@ $< $(TESTLIB) $(SAN_OBJ) $(BUILD)/libnodepool.a $(TEST_LIBS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libnodepool.a $(SAN_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(NO_LTO) $(LDFLAGS) -o $@ $< $(SAN_OBJ) $(BUILD)/libnodepool.a $(LIBS)

$(BUILD)/%.o: %.c $(wildcard lib/*.h) $(wildcard cli/*.h) $(wildcard tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LTO_CFLAGS) -c -o $@ $<

test: all
	tests/run-all.sh

clean:
	rm -rf build build-san
