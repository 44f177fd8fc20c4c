# ngx_ws_heartbeat: build, test, demo.
#
#   make            the module, build/ngx_ws_heartbeat_module.so
#   make test       deps + module + unit + bench_core build + fuzz smoke +
#                   integration (CI)
#   make demo       nginx + module + a WebSocket echo backend on 127.0.0.1
#
# NGINX_SRC   nginx source tree to build against (default: Debian nginx-dev)
# NGINX_BIN   nginx binary the tests run (default: /usr/sbin/nginx)
#
#   make compat NGINX_SRC=<tree> | NGINX_TARBALL=<nginx-x.y.z.tar.gz>
#                   that nginx built with Debian's and with nginx.org's
#                   flags, the module loaded into both, the suite against
#                   each (t/compat/compat.sh, docs/compatibility.md)
#   make for-installed   the module for the installed nginx (NGINX_BIN)

SHELL        := /bin/bash   # conf_flags is a bash array

NGINX_SRC    ?= /usr/share/nginx/src
NGINX_BIN    ?= /usr/sbin/nginx
PYTHON       ?= /usr/bin/python3
BUILD        ?= build
FUZZ_SECONDS ?= 30
DEMO_SECONDS ?= 0
PYTEST_ARGS  ?=

CXX          ?= g++
CLANGXX      ?= clang++-14
UNIT_FLAGS   := -std=c++17 -Wall -Wextra -Werror -g -O1 \
                -fsanitize=address,undefined -fno-omit-frame-pointer \
                -fno-sanitize-recover=all -Isrc
FUZZ_FLAGS   := -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined \
                -Isrc

SRC_CPP      := $(wildcard src/*.cpp)
SRC_HPP      := $(wildcard src/*.hpp)
UNIT_CPP     := $(wildcard t/unit/*.cpp)
FUZZ_TARGETS := $(patsubst t/fuzz/%.cpp,%,$(wildcard t/fuzz/fuzz_*.cpp))

MODULE       := $(BUILD)/ngx_ws_heartbeat_module.so
MODULE_ASAN  := $(BUILD)/asan/ngx_ws_heartbeat_module.so
ABS_BUILD     = $(abspath $(BUILD))

export NGINX_BIN PYTHON

.PHONY: all module module-asan deps unit fuzz integration integration-asan \
        test compat demo bench-core bench-core-build bench-callgrind clean format

all: module

module: $(MODULE)

# -O2 as Debian builds its nginx and modules (nginx's configure says -O).
# nginx's configure writes a Makefile into the tree it runs in, so it runs
# in a copy under build/; nothing is written outside build/. Debian's tree
# carries its configure flags (conf_flags); any other tree is configured
# --with-compat, which is what makes the .so loadable by other builds.
ASAN_OPT := -fsanitize=address,undefined -fno-omit-frame-pointer \
            -fno-sanitize-recover=all
$(BUILD)/nginx/configured:      CC_OPT := -O2
$(BUILD)/nginx-asan/configured: CC_OPT := $(ASAN_OPT)

$(BUILD)/%/configured: config
	rm -rf $(BUILD)/$*
	mkdir -p $(BUILD)/$*
	cp -a $(NGINX_SRC)/. $(BUILD)/$*/src
	cd $(BUILD)/$*/src && \
	if [ -f conf_flags ]; then \
	    . ./conf_flags; \
	else \
	    NGX_CONF_FLAGS=(--with-compat --with-http_ssl_module); \
	fi; \
	if [ -x configure ]; then conf=./configure; else conf=auto/configure; fi; \
	$$conf "$${NGX_CONF_FLAGS[@]}" $(NGINX_CONFIGURE_ARGS) \
	    --with-cc-opt="$(CC_OPT)" --with-ld-opt="$(CC_OPT)" \
	    --add-dynamic-module=$(CURDIR) \
	    --builddir=$(ABS_BUILD)/$*/objs >$(ABS_BUILD)/$*/configure.log 2>&1 \
	|| { tail -20 $(ABS_BUILD)/$*/configure.log; exit 1; }
	touch $@

MODULE_DEPS := ngx_ws_heartbeat_module.cpp $(wildcard ngx/*) $(SRC_CPP) $(SRC_HPP)

$(MODULE): $(BUILD)/nginx/configured $(MODULE_DEPS)
	$(MAKE) -s -f $(ABS_BUILD)/nginx/objs/Makefile -C $(BUILD)/nginx/src \
	    modules
	cp $(BUILD)/nginx/objs/ngx_ws_heartbeat_module.so $@.tmp
	mv -f $@.tmp $@   # a running nginx keeps its mapping of the old file
	@echo "built $@ against $(NGINX_SRC)"

# the same module built with ASan + UBSan, for the integration suite
$(MODULE_ASAN): $(BUILD)/nginx-asan/configured $(MODULE_DEPS)
	$(MAKE) -s -f $(ABS_BUILD)/nginx-asan/objs/Makefile \
	    -C $(BUILD)/nginx-asan/src modules
	@mkdir -p $(dir $@)
	cp $(BUILD)/nginx-asan/objs/ngx_ws_heartbeat_module.so $@.tmp
	mv -f $@.tmp $@

module-asan: $(MODULE_ASAN)

deps:
	@t/deps.sh

unit: $(BUILD)/unit/run_tests
	$(BUILD)/unit/run_tests

# Catch2's main compiles slowly: once, on its own
$(BUILD)/unit/main.o: t/unit/main.cpp
	@mkdir -p $(BUILD)/unit
	$(CXX) $(UNIT_FLAGS) -c $< -o $@

$(BUILD)/unit/run_tests: $(BUILD)/unit/main.o $(SRC_CPP) $(SRC_HPP) \
                         $(UNIT_CPP) $(wildcard t/unit/*.hpp)
	$(CXX) $(UNIT_FLAGS) $(BUILD)/unit/main.o \
	    $(filter-out t/unit/main.cpp,$(UNIT_CPP)) $(SRC_CPP) -o $@

$(BUILD)/fuzz/%: t/fuzz/%.cpp $(SRC_CPP) $(SRC_HPP)
	@mkdir -p $(BUILD)/fuzz
	$(CLANGXX) $(FUZZ_FLAGS) $< $(SRC_CPP) -o $@

# each target runs FUZZ_SECONDS on a copy of its seed corpus
fuzz: $(addprefix $(BUILD)/fuzz/,$(FUZZ_TARGETS))
	@set -e; for t in $(FUZZ_TARGETS); do \
	    name=$${t#fuzz_}; \
	    rm -rf $(BUILD)/fuzz/corpus-$$name; \
	    mkdir -p $(BUILD)/fuzz/corpus-$$name; \
	    cp t/fuzz/corpus/$$name/* $(BUILD)/fuzz/corpus-$$name/ 2>/dev/null || true; \
	    echo "fuzz: $$t for $(FUZZ_SECONDS)s"; \
	    $(BUILD)/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        $(BUILD)/fuzz/corpus-$$name 2>$(BUILD)/fuzz/$$t.log \
	        || { tail -40 $(BUILD)/fuzz/$$t.log; exit 1; }; \
	    grep -E "stat::number_of_executed_units|stat::average_exec_per_sec" \
	        $(BUILD)/fuzz/$$t.log | sed "s/^/  /"; \
	done

# t/bench_core/: the core's own benchmarks, against src/ alone. make test
# builds them (bench-core-build), without running them, so that they keep
# compiling as src/ changes.
BENCH_CORE_FLAGS := -std=c++17 -Wall -Wextra -Werror -Isrc

bench-core-build: $(BUILD)/bench_core $(BUILD)/callgrind_send

bench-core: $(BUILD)/bench_core
	$(BUILD)/bench_core

$(BUILD)/bench_core: t/bench_core/bench_scanner.cpp $(SRC_CPP) $(SRC_HPP)
	@mkdir -p $(BUILD)
	$(CXX) $(BENCH_CORE_FLAGS) -O2 $< $(SRC_CPP) -o $@

# instructions per 64-byte frame through outbound::send (client role,
# swallowing on), counted by callgrind; built with -O like the module
CALLGRIND := valgrind --tool=callgrind --callgrind-out-file=/dev/null

$(BUILD)/callgrind_send: t/bench_core/callgrind_send.cpp $(SRC_CPP) $(SRC_HPP)
	@mkdir -p $(BUILD)
	$(CXX) $(BENCH_CORE_FLAGS) -O -g $< $(SRC_CPP) -o $@

bench-callgrind: $(BUILD)/callgrind_send
	@for mode in chunks frames; do \
	    ir=$$($(CALLGRIND) --toggle-collect=wshb_bench_$$mode \
	        $(BUILD)/callgrind_send $$mode 2>&1 \
	        | sed -n "s/.*Collected : *//p"); \
	    echo "outbound::send, $$mode: $$ir Ir," \
	        "$$(( ir / 100000 )) per 64 B frame"; \
	done

integration: module
	NGX_WS_HEARTBEAT_MODULE=$(abspath $(MODULE)) \
	    $(PYTHON) -m pytest -p no:cacheprovider -q t $(PYTEST_ARGS)

# the whole suite again with the ASan module preloaded into Debian's nginx;
# a sanitizer report fails the test that caused it
integration-asan: module-asan
	NGX_WS_HEARTBEAT_MODULE=$(abspath $(MODULE_ASAN)) \
	NGX_WS_HEARTBEAT_PRELOAD="$$($(CXX) -print-file-name=libasan.so)" \
	    $(PYTHON) -m pytest -p no:cacheprovider -q t $(PYTEST_ARGS)

test: deps
	$(MAKE) module
	$(MAKE) unit
	$(MAKE) bench-core-build
	$(MAKE) fuzz FUZZ_SECONDS=$(FUZZ_SECONDS)
	$(MAKE) integration
	$(MAKE) integration-asan
	$(MAKE) reliability-quick

# one nginx version (a source tree or a release tarball) built twice, with
# Debian's and with nginx.org's configure flags, the module once against
# the pristine tree; a summary row per build. Output in build/compat/.
NGINX_TARBALL ?=

# NGINX_SRC only as given: the default, nginx-dev's tree, has no .c files
compat:
	NGINX_SRC="$(if $(filter file,$(origin NGINX_SRC)),,$(NGINX_SRC))" \
	NGINX_TARBALL="$(NGINX_TARBALL)" COMPAT_DIR=$(ABS_BUILD)/compat \
	    t/compat/compat.sh

# CI's second nginx: compat against Debian 13's 1.26.3, its upstream
# tarball fetched from Debian's archive (a trixie deb-src of our own under
# build/compat/apt/); "compat 1.26.3: skipped: <reason>" when it cannot be
.PHONY: compat-debian13

compat-debian13:
	BUILD="$(BUILD)" t/compat/debian13.sh

# the module for the installed nginx (NGINX_BIN): its version's source
# (NGINX_TARBALL=, NGINX_SRC=, or downloaded), its configure arguments,
# proven with nginx -t; build-aux/for-installed.sh says how
.PHONY: for-installed

for-installed:
	BUILD="$(BUILD)" build-aux/for-installed.sh

demo: deps module
	NGX_WS_HEARTBEAT_MODULE=$(abspath $(MODULE)) \
	    $(PYTHON) t/demo.py --seconds $(DEMO_SECONDS)

# the C++ core and its tests; the nginx glue (ngx_ws_heartbeat_module.cpp,
# ngx/) follows nginx's own layout (declarations aligned in columns, one
# blank line rules), which clang-format cannot reproduce: keep it by hand
format:
	clang-format -i src/*.hpp src/*.cpp t/unit/*.cpp t/unit/*.hpp \
	    t/fuzz/*.cpp

clean:
	rm -rf $(BUILD)

# The Debian package libnginx-mod-http-ws-heartbeat, built the way Debian
# builds its own nginx modules: `dh $@ --with nginx` (nginx-dev's addon)
# in a copy of the source tree under build/deb/; dpkg-buildpackage leaves
# the .deb (and .buildinfo, .changes, -dbgsym) in build/.
DEB_PKG   := libnginx-mod-http-ws-heartbeat
DEB_FILES := config ngx_ws_heartbeat_module.cpp ngx src debian README.md \
             examples
DEB_STAMP := $(BUILD)/deb.stamp

.PHONY: deb

deb: $(DEB_STAMP)
	@ls $(BUILD)/$(DEB_PKG)_*.deb >/dev/null 2>&1 \
	|| { rm -f $(DEB_STAMP); $(MAKE) --no-print-directory $(DEB_STAMP); }
	@ls $(BUILD)/$(DEB_PKG)_*.deb

$(DEB_STAMP): $(MODULE_DEPS) config README.md \
              $(wildcard debian/* debian/source/* docs/*.md examples/*)
	rm -rf $(BUILD)/deb $(BUILD)/$(DEB_PKG)[_-]*
	mkdir -p $(BUILD)/deb/docs
	cp -a $(DEB_FILES) $(BUILD)/deb/
	cp -a docs/*.md $(BUILD)/deb/docs/
	cd $(BUILD)/deb && dpkg-buildpackage -b -us -uc \
	    >$(ABS_BUILD)/deb.log 2>&1 \
	|| { tail -40 $(ABS_BUILD)/deb.log; exit 1; }
	touch $@

# Benchmarks (bench/, docs/benchmarks.md): the load generator / echo
# backend, sizeof of the per-connection state, and bench/run.py, which runs
# every configuration of the same nginx in one run. bench/deps.sh installs
# what t/deps.sh does (make deps: the build, nginx, valgrind, pgrep, ip),
# then the packages only the benchmark needs (ngx_lua, gnuplot, perf),
# which t/deps.sh leaves out. `make bench QUICK=1` is the short version; it
# writes to build/bench/quick/ instead of docs/bench/. BENCH_ARGS: more
# run.py flags.
BENCH_DIR  := $(BUILD)/bench
BENCH_OUT  := $(if $(QUICK),$(BENCH_DIR)/quick,docs/bench)
BENCH_ARGS ?=

.PHONY: bench bench-deps bench-tools

bench-deps:
	@bench/deps.sh

$(BENCH_DIR)/wsbench: bench/wsbench.cpp
	@mkdir -p $(BENCH_DIR)
	$(CXX) -std=c++17 -O2 -g -Wall -Wextra -Werror -pthread $< -o $@ -lcrypto

$(BENCH_DIR)/sizeof_ctx: bench/sizeof_ctx.cpp bench/sizeof.sh $(MODULE)
	@mkdir -p $(BENCH_DIR)
	bench/sizeof.sh $(BUILD) $(abspath $@)

# the floor of an idle heartbeat (one send, one recv a round trip)
$(BENCH_DIR)/floor: bench/floor.cpp
	@mkdir -p $(@D)
	$(CXX) -std=c++17 -O2 -g -Wall -Wextra -Werror $< -o $@ -lcrypto

bench-tools: $(BENCH_DIR)/wsbench $(BENCH_DIR)/sizeof_ctx $(BENCH_DIR)/floor

bench: bench-deps
	$(MAKE) module
	$(MAKE) bench-tools
	$(PYTHON) bench/run.py --out $(BENCH_OUT) $(if $(QUICK),--quick) \
	    $(BENCH_ARGS)

# Reliability suite (t/reliability/, see its README.md): hostile frames,
# network faults in namespaces of its own, process faults, a soak, and the
# same again with the ASan module and with nginx under valgrind. Needs root
# (ip netns). RELIABILITY=quick|full gates it: `make integration` collects
# t/reliability but runs none of it. RELIABILITY_BUGS=fail turns the tests
# of known bugs (xfail) into failures.
RELIABILITY_PYTEST = $(PYTHON) -m pytest -p no:cacheprovider -q \
                     t/reliability $(PYTEST_ARGS)

.PHONY: reliability reliability-quick reliability-valgrind

reliability-quick: module
	RELIABILITY=quick NGX_WS_HEARTBEAT_MODULE=$(abspath $(MODULE)) \
	    $(RELIABILITY_PYTEST)

reliability-valgrind: module
	@command -v valgrind >/dev/null || { echo "reliability-valgrind:" \
	    "valgrind is missing (make deps)"; exit 1; }
	RELIABILITY=quick RELIABILITY_VALGRIND=1 \
	NGX_WS_HEARTBEAT_MODULE=$(abspath $(MODULE)) $(RELIABILITY_PYTEST)

reliability: module module-asan
	RELIABILITY=full NGX_WS_HEARTBEAT_MODULE=$(abspath $(MODULE)) \
	    $(RELIABILITY_PYTEST)
	RELIABILITY=quick NGX_WS_HEARTBEAT_MODULE=$(abspath $(MODULE_ASAN)) \
	NGX_WS_HEARTBEAT_PRELOAD="$$($(CXX) -print-file-name=libasan.so)" \
	    $(RELIABILITY_PYTEST)
	$(MAKE) reliability-valgrind
