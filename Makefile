# ngx_ws_heartbeat: build, test, demo.
#
#   make            the module, build/ngx_ws_heartbeat_module.so
#   make test       deps + module + unit + fuzz smoke + integration (CI)
#   make demo       nginx + module + a WebSocket echo backend on 127.0.0.1
#
# NGINX_SRC   nginx source tree to build against (default: Debian nginx-dev)
# NGINX_BIN   nginx binary the tests run (default: /usr/sbin/nginx)

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
ABS_BUILD     = $(abspath $(BUILD))

export NGINX_BIN PYTHON

.PHONY: all module deps unit fuzz integration test demo bench-core \
        clean format

all: module

module: $(MODULE)

# nginx's configure writes a Makefile into the tree it runs in, so it runs
# in a copy under build/; nothing is written outside build/.
$(BUILD)/nginx/configured: config
	rm -rf $(BUILD)/nginx
	mkdir -p $(BUILD)/nginx
	cp -a $(NGINX_SRC)/. $(BUILD)/nginx/src
	cd $(BUILD)/nginx/src && \
	if [ -f conf_flags ]; then \
	    . ./conf_flags && \
	    ./configure "$${NGX_CONF_FLAGS[@]}" \
	        --add-dynamic-module=$(CURDIR) \
	        --builddir=$(ABS_BUILD)/nginx/objs >$(ABS_BUILD)/nginx/configure.log; \
	else \
	    ./configure --with-compat --with-http_ssl_module --with-http_v2_module \
	        --add-dynamic-module=$(CURDIR) \
	        --builddir=$(ABS_BUILD)/nginx/objs >$(ABS_BUILD)/nginx/configure.log; \
	fi || { tail -20 $(ABS_BUILD)/nginx/configure.log; exit 1; }
	touch $@

$(MODULE): $(BUILD)/nginx/configured ngx_ws_heartbeat_module.cpp \
           $(SRC_CPP) $(SRC_HPP)
	$(MAKE) -s -f $(ABS_BUILD)/nginx/objs/Makefile -C $(BUILD)/nginx/src \
	    modules
	cp $(BUILD)/nginx/objs/ngx_ws_heartbeat_module.so $@
	@echo "built $@ against $(NGINX_SRC)"

deps:
	@t/deps.sh

unit: $(BUILD)/unit/run_tests
	$(BUILD)/unit/run_tests

$(BUILD)/unit/run_tests: $(SRC_CPP) $(SRC_HPP) $(UNIT_CPP)
	@mkdir -p $(BUILD)/unit
	$(CXX) $(UNIT_FLAGS) $(UNIT_CPP) $(SRC_CPP) -o $@

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

bench-core: $(BUILD)/bench_core
	$(BUILD)/bench_core

$(BUILD)/bench_core: $(wildcard t/bench_core/*.cpp) $(SRC_CPP) $(SRC_HPP)
	@mkdir -p $(BUILD)
	$(CXX) -std=c++17 -O2 -Isrc $(wildcard t/bench_core/*.cpp) $(SRC_CPP) -o $@

integration: module
	NGX_WS_HEARTBEAT_MODULE=$(abspath $(MODULE)) \
	    $(PYTHON) -m pytest -p no:cacheprovider -q t $(PYTEST_ARGS)

test: deps
	$(MAKE) module
	$(MAKE) unit
	$(MAKE) fuzz FUZZ_SECONDS=$(FUZZ_SECONDS)
	$(MAKE) integration

demo: deps module
	NGX_WS_HEARTBEAT_MODULE=$(abspath $(MODULE)) \
	    $(PYTHON) t/demo.py --seconds $(DEMO_SECONDS)

format:
	clang-format -i ngx_ws_heartbeat_module.cpp src/*.hpp src/*.cpp \
	    t/unit/*.cpp t/fuzz/*.cpp

clean:
	rm -rf $(BUILD)
