#!/bin/bash
# Installs what `make bench` needs beyond `make deps` (t/deps.sh), with apt;
# quiet and idempotent when everything is there. Run as root on Debian 12.
# Kept apart from t/deps.sh so that `make test` stays lean.
set -euo pipefail

pkgs=(
    g++ make libssl-dev          # the load generator / echo backend
    nginx nginx-dev              # the binary under test, module headers
    libnginx-mod-http-lua        # the Lua frame-by-frame proxy (ngx_lua)
    lua-nginx-websocket          # resty.websocket.{server,client} for it
    gnuplot-nox                  # the plot in docs/benchmarks.md
    valgrind                     # callgrind profile of the relay hot path
    linux-perf                   # perf, where the machine has counters
    iproute2                     # ip netns + veth: mass dead-peer detection
    procps                       # uptime, pgrep
)

exec "$(dirname "$0")/../t/deps.sh" "${pkgs[@]}"
